"""The shuru guest agent: PID 1 of every sandbox VM, and the agent end of the channel.

`pid1` prepares the machine (mounts, hostname, loopback, root filesystem size), `agent` serves
the channel, `wire` is the frame format both ends share. The package also runs on the host as
a plain subprocess (`python -m shuru_guest --fd N`) so protocol tests need no VM.
"""
