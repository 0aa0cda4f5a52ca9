"""Is an address loopback, and can it exist at all? One answer for every listener and URL.

Listeners that expose the daemon's state or control default to loopback and refuse anything else unless
the config explicitly allows it, so a typo such as ``0.0.0.0`` can never publish them on the network.
Host names other than ``localhost`` are refused, not resolved: DNS may change under a running daemon.

``check_host``, ``check_port`` and ``split_tcp_endpoint`` reject addresses that cannot exist
(``999.1.1.1``, port ``99999``) while the config is validated: left to ZeroMQ or FFmpeg they fail late,
or worse, silently do something else (ZeroMQ binds port 99999 as 99999 mod 65536 = 34463). They only
look at the text; nothing is resolved or bound.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from .errors import UserError

__all__ = ["is_loopback_host", "is_loopback_endpoint", "check_listen_host", "check_host", "check_port", "split_tcp_endpoint", "free_loopback_port"]

_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (brackets allowed: ``[::1]``)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint that binds loopback only (``tcp://127.0.0.1:5560``, ``tcp://[::1]:5560``,
    ``tcp://localhost:5560``). ``*``, ``0.0.0.0``, ``::``, a LAN address, an interface name (``eth0``;
    ``lo`` included: it is only a name) and any other host name are not: a name is not resolved, and
    what it resolves to may change. ``ipc://`` and ``inproc://`` never leave the machine: True."""
    if not endpoint.startswith("tcp://"):
        return True
    host, _port = split_tcp_endpoint(endpoint)
    return host != "*" and is_loopback_host(host)


def check_listen_host(host: str, what: str, *, allow_remote: bool) -> None:
    """Raise UserError naming ``what`` when ``host`` is not loopback and remote access was not allowed."""
    if not allow_remote and not is_loopback_host(host):
        raise UserError(
            f"{what}: refusing to listen on non-loopback address {host!r}; use 127.0.0.1 or ::1, "
            "or allow it explicitly (allow_remote = true)"
        )


def check_host(host: str) -> None:
    """Raise ValueError when ``host`` (brackets allowed: ``[::1]``) cannot be an address: digits and dots
    that make no IPv4 address (``999.1.1.1``, ``10.0.1``), a malformed IPv6 literal, or a name with
    characters no host or interface name has. Dotted quads go through ``ipaddress``, not a regex, so
    the standard library's rules (octets 0..255, no leading zeros) are the ones applied."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise ValueError("the host is empty")
    if re.fullmatch(r"[0-9.]+", bare):
        _parse_ip(bare, ipaddress.IPv4Address, "IPv4")
    elif ":" in bare:
        _parse_ip(bare, ipaddress.IPv6Address, "IPv6")
    elif not _HOST_NAME.fullmatch(bare):
        raise ValueError(f"{host!r} is not a valid host name or address")


def _parse_ip(text: str, kind: type, label: str) -> None:
    try:
        kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid {label} address") from None


def check_port(port: int) -> None:
    """Raise ValueError unless ``port`` is 1..65535 (0 would mean "any free port" to a listener)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535 (got {port})")


def split_tcp_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (HOST, PORT), both checked; ValueError naming the endpoint otherwise.
    HOST may be ``*`` (every interface), an interface name, an IPv4 address or a bracketed IPv6 one."""
    host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not sep or not host or not port.isdigit():
        raise ValueError(f"{endpoint!r} is not a tcp endpoint like 'tcp://127.0.0.1:5560'")
    try:
        check_port(int(port))
        if host != "*":
            check_host(host)
    except ValueError as exc:
        raise ValueError(f"{endpoint!r}: {exc}") from None
    return host, int(port)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for tests, benchmarks and soaks that start
    servers: another process may still take it before the caller binds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
