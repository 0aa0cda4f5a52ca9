"""Is an address loopback? One answer for every listener (metrics HTTP, control socket).

Listeners that expose the daemon's state or control default to loopback and refuse anything else unless
the config explicitly allows it, so a typo such as ``0.0.0.0`` can never publish them on the network.
Host names other than ``localhost`` are refused, not resolved: DNS may change under a running daemon.
"""

from __future__ import annotations

import ipaddress

from .errors import UserError

__all__ = ["is_loopback_host", "check_listen_host"]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (brackets allowed: ``[::1]``)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_host(host: str, what: str, *, allow_remote: bool) -> None:
    """Raise UserError naming ``what`` when ``host`` is not loopback and remote access was not allowed."""
    if not allow_remote and not is_loopback_host(host):
        raise UserError(
            f"{what}: refusing to listen on non-loopback address {host!r}; use 127.0.0.1 or ::1, "
            "or allow it explicitly (allow_remote = true)"
        )
