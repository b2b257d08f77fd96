"""shuru: local-first microVM sandboxes for AI agents.

    from shuru import Sandbox
    with Sandbox.start() as sb:
        print(sb.exec("cat /etc/os-release").stdout)

`AsyncSandbox` is the implementation; `Sandbox` is its synchronous twin. Every error is a
`ShuruError`.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .errors import (BootError, ConfigError, ExecError, ExecTimeoutError, GuestFileError,
                     GuestFileNotFoundError, GuestPermissionError, HostError, ImageError,
                     ProtocolError, SandboxDiedError, SandboxStateError, ShuruError,
                     ShuruWarning)
from .errors import ExecOutputLimitError
from .process import ExecResult, OutputChunk, Process
from .sandbox import AsyncSandbox, State
from .sync import Sandbox, SyncProcess

try:
    __version__ = _version("shuru")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "AsyncSandbox", "Sandbox", "SyncProcess", "State", "ExecResult", "OutputChunk", "Process", "ShuruError",
    "ShuruWarning", "BootError", "ConfigError", "ExecError", "ExecTimeoutError",
    "GuestFileError", "GuestFileNotFoundError", "GuestPermissionError", "HostError",
    "ImageError", "ProtocolError", "SandboxDiedError", "SandboxStateError", "__version__",
    "ExecOutputLimitError",
]
