"""Networking for sandboxes, host side: the policy proxy every guest connection goes
through, and the settings it enforces.

    config   — Secret, NetworkConfig, validation and parsing of the user's settings
    names    — host names and allowlist patterns
    dns      — one DNS message in, one answer out
    fakeip   — the addresses handed to the guest and the names behind them
    ca       — the per-sandbox CA and its leaf certificates
    http     — request heads (placeholder rewriting), body framing, response framing
    conn     — GuestConn, and TLS terminated over one
    scrub    — masking real values that an intercepted server reflects back
    relay    — moving bytes once a connection is decided: tunnel, or intercepted HTTP
    upstream — the proxy's own outbound connections (resolve map, HTTPS_PROXY, NO_PROXY)
    audit    — the event log
    proxy    — PolicyProxy, which runs it all
"""

from .config import NetworkConfig, Secret, network_config, network_problems, parse_secret_flag
from .conn import GuestConn, StreamGuestConn
from .proxy import GUEST_CA_BUNDLE, PolicyProxy
from .upstream import UpstreamError

__all__ = [
    "GUEST_CA_BUNDLE", "GuestConn", "NetworkConfig", "PolicyProxy", "Secret",
    "StreamGuestConn", "UpstreamError", "network_config", "network_problems",
    "parse_secret_flag",
]
