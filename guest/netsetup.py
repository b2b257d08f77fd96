"""Kernel side of the guest's network capture: modules, a dummy interface, a default route,
the nftables rules, the resolver and the trust store.

The VM never has a network device. With allow_net, programs still need somewhere to send
packets, so `dummy0` gets an address and the default route (a dummy interface drops whatever
reaches it), and nftables, in the output path, turns every outgoing TCP connection into one to
the agent's own listener (`redirect`), sends DNS (to any server, UDP or TCP) to the agent's
resolver, and rejects the rest at once, so nothing waits on a silent drop. Loopback is left alone.

Everything here is idempotent and depends on nothing from boot (no kernel command line, no
early unit): the host asks for it after each handshake, and a VM restored from a memory
snapshot simply gets asked again. Execs cost ~60 ms each under TCG, so there are two (modprobe
and nft); addresses and the route are set with ioctls.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

CAPTURE_PORT = 15001  # the agent's TCP listener on 127.0.0.1 that nftables redirects to
DNS_ADDR = "127.0.0.53"
DEVICE = "dummy0"
# Not in 198.18.0.0/15 (the proxy's fake addresses must route out, not to ourselves).
GUEST_ADDR, GATEWAY, NETMASK = "10.0.2.15", "10.0.2.2", "255.255.255.0"
# All that the rules use: any left out the kernel loads itself, one modprobe exec each.
MODULES = ("nf_tables", "nft_chain_nat", "nft_nat", "nft_redir", "nft_reject_ipv4", "dummy")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RESOLV_CONF = "/etc/resolv.conf"

RULES = f"""\
table ip shuru
delete table ip shuru
table ip shuru {{
    chain nat_out {{
        type nat hook output priority -100; policy accept;
        oifname "lo" return
        ip daddr 127.0.0.0/8 return
        tcp dport 53 dnat to {DNS_ADDR}:53
        meta l4proto tcp redirect to :{CAPTURE_PORT}
        udp dport 53 dnat to {DNS_ADDR}:53
    }}
    chain filter_out {{
        type filter hook output priority 0; policy accept;
        oifname "lo" accept
        ip daddr 127.0.0.0/8 accept
        meta l4proto tcp reject with tcp reset
        reject
    }}
}}
"""

SIOCSIFADDR, SIOCSIFNETMASK, SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8916, 0x891C, 0x8913, 0x8914
SIOCADDRT, SIOCDELRT = 0x890B, 0x890C
IFF_UP, RTF_UP, RTF_GATEWAY = 0x1, 0x1, 0x2


class SetupError(Exception):
    """A step failed; the message says which and why."""


def _sockaddr(ip: str) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(ip))


def _run(argv: list[str], stdin: bytes = b"") -> None:
    """Run a helper to completion, its stderr captured for the error message."""
    in_r, in_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                             setsid=True, file_actions=[
                                 (os.POSIX_SPAWN_DUP2, in_r, 0),
                                 (os.POSIX_SPAWN_DUP2, null, 1),
                                 (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except OSError as e:
        raise SetupError(f"{argv[0]}: {e.strerror}") from None
    finally:
        for fd in (in_r, err_w, null):
            os.close(fd)
    try:
        os.write(in_w, stdin)  # small (the rules); fits the pipe buffer
    finally:
        os.close(in_w)
    err = b""
    while chunk := os.read(err_r, 4096):
        err += chunk
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        detail = err.decode(errors="replace").strip()
        raise SetupError(f"{' '.join(argv)} failed ({code}): {detail}")


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _set_flags(sock: socket.socket, name: str, up: bool) -> None:
    flags = struct.unpack_from("H", fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(name, b"")), 16)[0]
    flags = flags | IFF_UP if up else flags & ~IFF_UP
    fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags)))


def _route(sock: socket.socket, request: int) -> None:
    # struct rtentry (LP64): the default route via GATEWAY; the kernel finds dummy0 from the
    # gateway's subnet, so rt_dev (a pointer) can stay NULL.
    entry = struct.pack("@L16s16s16sHhLPhPLLH", 0, _sockaddr("0.0.0.0"), _sockaddr(GATEWAY),
                        _sockaddr("0.0.0.0"), RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
    fcntl.ioctl(sock, request, entry)


def _in_the_vm() -> bool:
    # Everything here rewires the machine it runs on; on a host (tests) that must never happen.
    return os.getpid() == 1


def interface_up() -> None:
    if not _in_the_vm():
        raise SetupError("network capture runs only as the VM's PID 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(DEVICE, _sockaddr(GUEST_ADDR)))
        fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(DEVICE, _sockaddr(NETMASK)))
        _set_flags(sock, DEVICE, True)
        try:
            _route(sock, SIOCADDRT)
        except FileExistsError:
            pass  # enabled before (this VM was restored from a snapshot)


def interface_down() -> None:
    """Back to offline: no default route, dummy0 down (connects fail with ENETUNREACH)."""
    if not _in_the_vm():
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for step in (lambda: _route(sock, SIOCDELRT), lambda: _set_flags(sock, DEVICE, False)):
            try:
                step()
            except OSError:
                pass


def _pem_blocks(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    blocks = []
    for part in text.split(end)[:-1]:
        start = part.find("-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:].strip() + "\n" + end + "\n")
    return blocks


def trust(bundle_path: str) -> int:
    """Add every certificate of the host's bundle (its trust store plus this sandbox's CA)
    that the system bundle lacks, so tools that read only the system bundle (apt, git, curl)
    trust what programs honouring SSL_CERT_FILE do. Returns how many were added."""
    with open(bundle_path) as f:
        wanted = _pem_blocks(f.read())
    try:
        with open(SYSTEM_BUNDLE) as f:
            have = {"".join(b.split()) for b in _pem_blocks(f.read())}
    except FileNotFoundError:
        have = set()
    new = [b for b in wanted if "".join(b.split()) not in have]
    if new:
        os.makedirs(os.path.dirname(SYSTEM_BUNDLE), exist_ok=True)
        with open(SYSTEM_BUNDLE, "a") as f:
            f.write("".join(new))
    return len(new)


def resolver() -> None:
    tmp = RESOLV_CONF + ".shuru"
    with open(tmp, "w") as f:
        f.write(f"# written by shuru: DNS goes to the agent, which asks the host's policy\n"
                f"nameserver {DNS_ADDR}\noptions edns0\n")
    os.replace(tmp, RESOLV_CONF)  # replaces a symlink too, rather than writing through it


_kernel_ready = False  # modules loaded and rules in place: survives a snapshot restore


# What a template VM loads before it is saved (see `Agent.park`), so clones restored from it
# skip most of the modprobe's ~0.9 s. Netfilter modules do nothing by themselves (no rules,
# no route); `dummy` is left out, since loading it creates dummy0, and an offline sandbox
# has no network device at all.
PRELOAD = tuple(name for name in MODULES if name != "dummy")


def load_modules(names: tuple[str, ...] = MODULES) -> None:
    """Load those of `names` that are not loaded yet (one exec, or none)."""
    if not _in_the_vm():
        raise SetupError("network capture runs only as the VM's PID 1")
    missing = [name for name in names if not os.path.isdir(f"/sys/module/{name}")]
    if missing:
        _run(["/usr/sbin/modprobe", "-a", *missing])


def enable(bundle_path: str | None) -> None:
    """Everything but the agent's sockets, in the order that lets each step succeed."""
    global _kernel_ready
    if not _in_the_vm():
        raise SetupError("network capture runs only as the VM's PID 1")
    if not _kernel_ready:
        load_modules()
        _run(["/usr/sbin/nft", "-f", "-"], RULES.encode())
        _kernel_ready = True
    try:
        interface_up()
    except OSError as e:
        raise SetupError(f"bringing up {DEVICE}: {e.strerror}") from None
    resolver()
    if bundle_path:
        trust(bundle_path)
