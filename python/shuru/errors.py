"""The one error tree of shuru.

Every failure a user can see is a `ShuruError`. Subclasses say which part failed and carry
the evidence (path, state, exit code, console tail) as attributes, so a harness can branch on
type and a person can read `str(error)`. Foreign exceptions (OSError, msgpack, asyncio) are
translated at the boundary with ``raise ... from``.

Every error class shuru raises is defined here, and exported from `shuru`. Where Python has
a builtin for the same failure, the class is that builtin too (`GuestFileNotFoundError` is a
`FileNotFoundError`, `ExecTimeoutError` a `TimeoutError`...), so code written against files
and subprocesses catches the guest's errors the way it catches the host's. Those classes
fill the `OSError` attributes: `errno` (the host's number for the guest's errno name),
`strerror` (the message) and `filename` (the guest path).
"""

from __future__ import annotations

import errno as _errno

from .sanitize import neutralise


class ShuruError(Exception):
    """Root of every error shuru raises. `hint` is the fix to suggest, if there is one."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class ShuruWarning(UserWarning):
    """Something works, but slower or weaker than it could (e.g. TCG instead of KVM)."""


class ConfigError(ShuruError):
    """Invalid configuration: a flag, a config-file field or an SDK option. `problems` lists
    every problem found, each naming its field, so a user fixes them all in one go."""

    def __init__(self, problems: list[str], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"invalid configuration{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration{where}:\n{lines}"
        super().__init__(message)


class ImageError(ShuruError):
    """The guest image is missing, damaged, or could not be built."""


class HostError(ShuruError):
    """The host lacks something shuru needs (qemu, a runtime directory, KVM...)."""


class UnsupportedError(HostError):
    """The platform's backend lacks what was asked (a capability, a disk format). Raised
    before anything is changed. `capability` names what is missing, `backend` the backend
    (with its driver or accelerator)."""

    def __init__(self, message: str, *, capability: str, backend: str,
                 hint: str | None = None):
        self.capability = capability
        self.backend = backend
        super().__init__(message, hint=hint)


class BootError(ShuruError):
    """The VM did not come up. `console_tail` holds the last lines of its serial console."""

    def __init__(self, message: str, *, console_tail: str = "", hint: str | None = None):
        self.console_tail = console_tail = neutralise(console_tail)  # guest text: see sanitize
        if console_tail:
            message = f"{message}\n--- console (last lines) ---\n{console_tail.rstrip()}\n---"
        super().__init__(message, hint=hint)


class SandboxStateError(ShuruError):
    """A method was called in a state that does not allow it (e.g. exec after stop)."""

    def __init__(self, message: str, *, state: str, required: str | None = None):
        self.state = state
        self.required = required
        super().__init__(message)


class SandboxDiedError(ShuruError):
    """The VM or its agent went away while a call was in flight."""

    def __init__(self, message: str, *, console_tail: str = ""):
        self.console_tail = console_tail = neutralise(console_tail)  # guest text: see sanitize
        if console_tail:
            message = f"{message}\n--- console (last lines) ---\n{console_tail.rstrip()}\n---"
        super().__init__(message)


class SandboxNotFoundError(ShuruError):
    """No detached sandbox of that name is running (`shuru ps` lists those that are)."""

    def __init__(self, message: str, *, name: str = "", hint: str | None = None):
        self.name = name
        super().__init__(message, hint=hint)


class AccessError(ShuruError):
    """A detached sandbox belongs to another user: only the user who started it may list,
    attach to or stop it."""


class ProtocolError(ShuruError):
    """The peer sent something the wire protocol does not allow (bad frame, wrong type,
    unknown version). The guest is untrusted, so this is an expected failure mode."""


class ExecError(ShuruError):
    """A process could not be started in the guest (other than 'command not found', which
    is reported like a shell does: exit status 127 and a message on stderr)."""


class ExecTimeoutError(ShuruError, TimeoutError):
    """A command ran past its timeout: from `exec`, its process group was killed and the
    error carries the partial output; from `Process.wait(timeout=)`, the process is still
    running. Also a `TimeoutError` (errno ETIMEDOUT)."""

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b"", timeout: float):
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        super().__init__(message)
        _set_os_fields(self, "ETIMEDOUT", message, None)


class ExecOutputLimitError(ShuruError):
    """A command wrote more than `exec`'s `max_output` bytes to one stream (`stream`:
    "stdout" or "stderr"); its process group was killed. Carries the first `limit` bytes of
    each stream."""

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b"", limit: int,
                 stream: str, hint: str | None = None):
        self.stdout = stdout
        self.stderr = stderr
        self.limit = limit
        self.stream = stream
        super().__init__(message, hint=hint)


class GuestFileError(ShuruError, OSError):
    """A file operation failed inside the guest. `path` is the guest path, `code` the errno
    name the guest reported (e.g. 'ENOENT'). Also an `OSError`; the subclasses below are the
    matching builtin too. The message names the guest path."""

    def __init__(self, message: str, *, path: str, code: str | None = None):
        self.path = path
        self.code = code
        super().__init__(message)
        _set_os_fields(self, code, message, path)


class GuestFileNotFoundError(GuestFileError, FileNotFoundError):
    """ENOENT: the guest path (or a directory on the way to it) does not exist."""


class GuestPermissionError(GuestFileError, PermissionError):
    """EACCES, EPERM or EROFS: the guest refused the operation."""


class GuestIsADirectoryError(GuestFileError, IsADirectoryError):
    """EISDIR: a directory where a file was expected (reading or writing a directory)."""


class GuestNotADirectoryError(GuestFileError, NotADirectoryError):
    """ENOTDIR: a file where a directory was expected (listing or watching a file)."""


class GuestFileExistsError(GuestFileError, FileExistsError):
    """EEXIST: the target exists where none may (e.g. mkdir without parents)."""


_GUEST_FILE_ERRORS: dict[str, type[GuestFileError]] = {
    "ENOENT": GuestFileNotFoundError,
    "EACCES": GuestPermissionError, "EPERM": GuestPermissionError,
    "EROFS": GuestPermissionError,
    "EISDIR": GuestIsADirectoryError,
    "ENOTDIR": GuestNotADirectoryError,
    "EEXIST": GuestFileExistsError,
}


def guest_file_error(code: object, message: object, path: str) -> GuestFileError:
    """The error for a guest's file-operation failure: the class its errno name maps to
    (GuestFileError for the rest), with a message that names the guest path."""
    code = code if isinstance(code, str) else "EIO"
    text = neutralise(message) if isinstance(message, str) and message else code
    if path and path not in text:
        text = f"{path}: {text}"
    cls = _GUEST_FILE_ERRORS.get(code, GuestFileError)
    return cls(f"guest: {text}", path=path, code=code)


def _set_os_fields(error: OSError, code: str | None, message: str, path: str | None) -> None:
    """Fill OSError's attributes: errno is the host's number for the guest's errno name (the
    names agree across platforms; the numbers do not), None for a name the host lacks."""
    number = getattr(_errno, code, None) if code else None
    error.errno = number if isinstance(number, int) else None
    error.strerror = message
    error.filename = path


class CheckpointError(ShuruError):
    """A checkpoint is missing, damaged, misnamed, or in use by others."""


class StaleStateError(ShuruError):
    """A saved state that cannot be used (made by another QEMU, damaged, other format)."""


class QMPError(HostError):
    """QEMU refused a QMP command; `qmp_class` is its error class."""

    def __init__(self, command: str, qmp_class: str, desc: str):
        self.command = command
        self.qmp_class = qmp_class
        super().__init__(f"QEMU refused {command}: {desc}")


class UpstreamError(ShuruError):
    """A connection to a real host could not be made. `host` and `port` say which."""

    def __init__(self, message: str, *, host: str, port: int):
        super().__init__(message)
        self.host = host
        self.port = port


class HTTPError(ShuruError):
    """A program in the guest sent something that is not an HTTP request the proxy can pass
    on safely. `status` is what to answer it with. Not a ProtocolError: the agent kept to the
    protocol; a guest program's bad HTTP is only that connection's failure."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(UpstreamError):
    """The policy will not connect there (an address or name that is not public); the
    message says why. Raised before any connection is attempted."""


class PortError(ShuruError):
    """A port forward failed: a host port in use, or nothing listening on the guest port.
    `port` is the port concerned, `code` the errno name the guest reported, if any."""

    def __init__(self, message: str, *, port: int | None, code: str | None = None,
                 hint: str | None = None):
        self.port = port
        self.code = code
        super().__init__(message, hint=hint)


class MountError(ShuruError):
    """A host folder could not be mounted, or its changes not read or applied."""
