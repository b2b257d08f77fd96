"""The QEMU backend (Linux): the machine and its lifecycle (`machine`), the accelerator choice
(`accel`), and the QMP client that commands a running QEMU (`qmp`)."""
