"""``ipc://`` socket files: where one lives, and whether a live listener already owns it.

libzmq replaces an existing ipc socket file on bind, so a second daemon bound to a path the first one
still serves would silently take it over (new connections reach the newcomer; the first keeps running,
unreachable). Every ipc bind (control socket, publisher endpoints) asks :func:`refuse_if_in_use` first;
a stale file, with nobody accepting connections, is left for the bind to replace.
"""

from __future__ import annotations

import socket as pysocket
from pathlib import Path

from .errors import UserError

__all__ = ["ipc_path", "in_use", "refuse_if_in_use"]


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint; None for other transports and abstract sockets."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return Path(endpoint[len("ipc://") :])


def in_use(path: Path) -> bool:
    """True when something accepts connections on the unix socket at ``path``."""
    if not path.exists():
        return False
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False  # stale: nobody accepts connections there
    finally:
        probe.close()
    return True


def refuse_if_in_use(path: Path, what: str, *, shown: str | None = None, error: type[UserError] = UserError) -> None:
    """Raise ``error`` ("WHAT: SHOWN is in use by another running trtstream"; SHOWN defaults to the
    path) when a listener owns ``path``."""
    if in_use(path):
        raise error(f"{what}: {shown or path} is in use by another running trtstream")
