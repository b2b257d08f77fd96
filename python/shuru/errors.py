"""The one error tree of shuru.

Every failure a user can see is a `ShuruError`. Subclasses say which part failed and carry
the evidence (path, state, exit code, console tail) as attributes, so a harness can branch on
type and a person can read `str(error)`. Foreign exceptions (OSError, msgpack, asyncio) are
translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations


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


class BootError(ShuruError):
    """The VM did not come up. `console_tail` holds the last lines of its serial console."""

    def __init__(self, message: str, *, console_tail: str = "", hint: str | None = None):
        self.console_tail = console_tail
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
        self.console_tail = console_tail
        if console_tail:
            message = f"{message}\n--- console (last lines) ---\n{console_tail.rstrip()}\n---"
        super().__init__(message)


class ProtocolError(ShuruError):
    """The peer sent something the wire protocol does not allow (bad frame, wrong type,
    unknown version). The guest is untrusted, so this is an expected failure mode."""


class ExecError(ShuruError):
    """A process could not be started in the guest (other than 'command not found', which
    is reported like a shell does: exit status 127 and a message on stderr)."""


class ExecTimeoutError(ShuruError):
    """A command ran past its timeout; its process group was killed. Carries partial output."""

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b"", timeout: float):
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        super().__init__(message)


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


class GuestFileError(ShuruError):
    """A file operation failed inside the guest. `path` is the guest path, `code` the errno
    name the guest reported (e.g. 'ENOENT')."""

    def __init__(self, message: str, *, path: str, code: str | None = None):
        self.path = path
        self.code = code
        super().__init__(message)


class GuestFileNotFoundError(GuestFileError):
    pass


class GuestPermissionError(GuestFileError):
    pass
