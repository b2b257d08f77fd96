"""What makes a restored clone its own machine: host entropy mixed into the kernel's RNG
with an immediate reseed, and the wall clock set from the host.

Every clone restored from one saved state wakes with the same RNG state and the clock of the
moment it was saved; without this, two clones would hand out the same "random" UUIDs and
keys, and their clocks would lag by the state's age. Needs root (CAP_SYS_ADMIN and
CAP_SYS_TIME), which the agent has as PID 1.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time

# From <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
MAX_ENTROPY = 512  # bytes; the host sends 64, anything beyond this is refused


def add_entropy(data: bytes) -> None:
    """Mix `data` into the input pool, credited as full entropy (it comes from the host's
    CSPRNG), then force the CRNG to reseed so the very next read differs between clones."""
    if not 16 <= len(data) <= MAX_ENTROPY:
        raise ValueError(f"entropy must be 16..{MAX_ENTROPY} bytes, got {len(data)}")
    data += b"\0" * (-len(data) % 4)  # the kernel takes whole 32-bit words
    info = struct.pack("ii", len(data) * 8, len(data)) + data
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, info)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def set_clock(time_ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)


def apply(entropy: bytes, time_ns: int) -> None:
    add_entropy(entropy)
    set_clock(time_ns)
