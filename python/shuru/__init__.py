"""shuru: local-first microVM sandboxes for AI agents.

    from shuru import Sandbox
    with Sandbox.start() as sb:
        print(sb.exec("cat /etc/os-release").stdout)

`AsyncSandbox` is the implementation; `Sandbox` is its synchronous twin. Every error is a
`ShuruError`; every error class is exported here.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .errors import (AccessError, BootError, CheckpointError, ConfigError, ExecError,
                     ExecOutputLimitError, ExecTimeoutError, GuestFileError,
                     GuestFileExistsError, GuestFileNotFoundError, GuestIsADirectoryError,
                     GuestNotADirectoryError, GuestPermissionError, HostError, HTTPError,
                     ImageError, MountError, PortError, ProtocolError, QMPError, Refused,
                     SandboxDiedError, SandboxNotFoundError, SandboxStateError, ShuruError,
                     ShuruWarning, StaleStateError, UnsupportedError,
                     UpstreamError)
from .process import ExecResult, OutputChunk, Process
from .sandbox import AsyncSandbox, State
from .sync import Sandbox, SyncProcess

try:
    __version__ = _version("shuru")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "AsyncSandbox", "Sandbox", "SyncProcess", "State", "ExecResult", "OutputChunk", "Process",
    "ShuruError", "ShuruWarning", "AccessError", "BootError", "CheckpointError", "ConfigError",
    "ExecError", "ExecOutputLimitError", "ExecTimeoutError", "GuestFileError",
    "GuestFileExistsError", "GuestFileNotFoundError", "GuestIsADirectoryError",
    "GuestNotADirectoryError", "GuestPermissionError", "HostError", "HTTPError", "ImageError",
    "MountError", "PortError", "ProtocolError", "QMPError", "Refused", "SandboxDiedError",
    "SandboxNotFoundError", "SandboxStateError", "StaleStateError", "UnsupportedError",
    "UpstreamError",
    "__version__",
]
