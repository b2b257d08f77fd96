"""The helper backend: VMs through `shuru-helper` (Virtualization.framework on macOS, a process
driver for tests on Linux). `machine` launches and speaks to the helper; `protocol` is the pure
half of its wire protocol."""
