"""sd_notify: tell systemd when trtstream is ready, reloading, stopping, alive, or still building.

Under ``Type=notify`` systemd waits for ``READY=1`` before it considers the unit started, restarts it
when ``WATCHDOG=1`` stops arriving within ``WatchdogSec``, and shows ``STATUS=`` in ``systemctl
status``. The messages are datagrams to the socket named by ``$NOTIFY_SOCKET``. When systemd-python is
installed its ``daemon.notify`` (libsystemd's ``sd_notify``, which also knows vsock and future
transports) sends them; otherwise this module speaks the documented protocol itself (sd_notify(3):
one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=VALUE`` lines; a leading ``@`` names
a socket in the abstract namespace). Without ``$NOTIFY_SOCKET`` (not run by systemd, or ``Type=simple``)
every call is a cheap no-op, so the daemon calls the notifier unconditionally.

A failed send never raises: losing a status line must not take the daemon down; a missed ``WATCHDOG=1``
is exactly what the watchdog exists to notice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["Notifier", "monotonic_usec", "status_line", "extending_timeout"]

log = logging.getLogger("trtstream.notify")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what ``MONOTONIC_USEC=`` must carry next to ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _have_systemd_python() -> bool:
    try:
        from systemd import daemon  # noqa: F401
    except ImportError:
        return False
    return True


class Notifier:
    """Sends sd_notify messages; a no-op when the process was not started by systemd with a notify socket.

    ``backend`` is ``"systemd-python"``, ``"socket"`` (the pure-Python protocol) or ``"none"``.
    systemd-python reads ``$NOTIFY_SOCKET`` from the real process environment, so it is chosen only when
    ``environ`` is ``os.environ`` (tests pass their own mapping to force the pure-Python path).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, use_systemd_python: bool | None = None):
        self._environ = os.environ if environ is None else environ
        address = self._environ.get("NOTIFY_SOCKET") or None
        if use_systemd_python is None:
            use_systemd_python = self._environ is os.environ and _have_systemd_python()
        self._address = self._resolve(address)
        self._socket: socket.socket | None = None
        self._warned = False
        if address is None or (self._address is None and not use_systemd_python):
            self.backend = "none"
        elif use_systemd_python:
            self.backend = "systemd-python"
        else:
            self.backend = "socket"

    @staticmethod
    def _resolve(address: str | None) -> str | None:
        """The AF_UNIX address for the pure-Python path; None when there is none or it is another transport."""
        if not address:
            return None
        if address.startswith("@"):
            return "\0" + address[1:]  # abstract namespace
        if address.startswith("/"):
            return address
        log.warning("NOTIFY_SOCKET=%s is not a unix socket path; install systemd-python to use it", address)
        return None

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was sent (False when disabled or on error)."""
        if not self.enabled or not assignments:
            return False
        message = "\n".join(assignments)
        try:
            if self.backend == "systemd-python":
                from systemd import daemon

                return bool(daemon.notify(message))
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode("utf-8"), self._address)
            return True
        except OSError as exc:
            if not self._warned:  # once: a vanished manager would otherwise flood the log every tick
                log.warning("sd_notify failed (%s); further failures are not logged", exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """Serving: engine loaded, first batch run. Also ends a reload (``RELOADING=1`` ... ``READY=1``)."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self, status: str | None = None) -> bool:
        return self.notify("WATCHDOG=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> bool:
        """Reload started; ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd >= 253) and
        harmless under ``Type=notify``. Send :meth:`ready` when the reload is complete."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more from now before the start/stop timeout fires (systemd >= 236). Long
        engine builds send this repeatedly, each time before the previous extension runs out."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """``WatchdogSec`` in seconds when systemd expects ``WATCHDOG=1`` from this process, else None.

        ``$WATCHDOG_PID`` names the process the watchdog is for; a child that inherited the variables
        must not ping on its parent's behalf."""
        raw = self._environ.get("WATCHDOG_USEC")
        if not raw:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            usec = int(raw)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    """A STATUS= value must stay on one line: a newline would start a new (bogus) assignment."""
    return " ".join(str(text).split())


def status_line(heartbeat: Mapping[str, Any]) -> str:
    """``systemctl status`` text from a heartbeat body: backend, total fps, and each source's state.

    Reads the heartbeat the publisher already built; it never calls ``SourceStats.snapshot()`` (which
    advances the heartbeat's fps meter)."""
    backend = heartbeat.get("backend") or {}
    sources = heartbeat.get("sources") or []
    fps = sum(float(s.get("fps") or 0) for s in sources)
    states = ", ".join(f"{s.get('id')} {s.get('state')}" for s in sources)
    name = backend.get("name", "?")
    device = backend.get("device")
    return f"{name}{' on ' + device if device else ''}: {fps:.1f} fps, {len(sources)} source(s): {states}"


@contextmanager
def extending_timeout(notifier: Notifier, step_s: float = 60.0, limit_s: float = 3600.0) -> Iterator[None]:
    """Keep systemd's start (or stop) timeout from firing while a long step runs, e.g. an engine build.

    Sends ``EXTEND_TIMEOUT_USEC`` for ``step_s`` at once and again every ``step_s / 2`` while the block
    runs, so ``TimeoutStartSec`` can stay short for a normal start while a build of any length survives.
    After ``limit_s`` the extensions stop, so a build that hangs still ends in a failed start (and a
    restart) instead of a unit stuck in "activating" forever.
    """
    if not notifier.enabled:
        yield
        return
    done = threading.Event()
    deadline = time.monotonic() + limit_s

    def extend() -> None:
        while time.monotonic() < deadline:
            notifier.extend_timeout(min(step_s, max(1.0, deadline - time.monotonic())))
            if done.wait(step_s / 2):
                return

    thread = threading.Thread(target=extend, name="extend-timeout", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
