"""What a boot failure shows of the console: the tail, or from the kernel's panic line on."""


from shuru.backends.qemu.machine import ConsoleBuffer, QemuMachine


def tail_of(text: str, lines: int = 5, chunk: int = 4096) -> str:
    machine = QemuMachine.__new__(QemuMachine)
    machine._console = ConsoleBuffer()
    data = text.encode()
    for i in range(0, len(data), chunk):
        machine._console.feed(data[i:i + chunk])
    return machine.console_tail(lines)


def test_plain_tail():
    text = "".join(f"line {i}\r\n" for i in range(20))
    assert tail_of(text) == "\n".join(f"line {i}" for i in range(15, 20))


def test_a_panic_before_the_tail_is_kept():
    text = "boot\nKernel panic - not syncing: VFS: Unable to mount root fs\n" + "".join(
        f"trace {i}\n" for i in range(30))
    out = tail_of(text).splitlines()
    assert out[0].startswith("Kernel panic") and out[-1] == "trace 29" and len(out) == 31


def test_control_sequences_in_the_tail_are_neutralised():
    out = tail_of("ok\r\n\x1b]52;c;aGk=\x07\x1b[2Jgone\r\n")
    assert out == "ok\n\\x1b]52;c;aGk=\\x07\\x1b[2Jgone"


def test_a_console_that_arrives_a_byte_at_a_time_keeps_its_panic_line():
    # A serial port under TCG often reaches the host in one- or two-byte reads.
    text = "boot\nKernel panic - not syncing: VFS\n" + "".join(f"[ 1.{i:06d}] trace\n"
                                                             for i in range(30))
    out = tail_of(text, chunk=1).splitlines()
    assert out[0].startswith("Kernel panic") and len(out) == 31


def test_the_console_buffer_keeps_only_its_last_bytes():
    buffer = ConsoleBuffer(keep=10)
    for byte in b"0123456789abcdefghijklmnopqrstuvwxyz":
        buffer.feed(bytes([byte]))
    assert buffer.bytes() == b"qrstuvwxyz"
