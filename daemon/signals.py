"""Signals for ``trtstream run``, from the first line of ``cmd_run`` to exit.

The default disposition of SIGHUP terminates a process, and ``trtstream run`` spends around a second
before its daemon exists (imports, reading the config, setting up logging): a SIGHUP then (a
``systemctl reload`` racing the start, a script reloading every trtstream) would kill it. So the first
line of ``cmd_run``, before the heavy imports, installs :class:`StartupSignals`, whose handlers only
record what arrived. Once the daemon exists, :meth:`StartupSignals.hand_over` installs the real handlers
and replays what was recorded:

* SIGTERM or SIGINT: the stop is requested at once; the daemon then starts nothing (no model load, no
  source) and exits 0, like any stop.
* SIGHUP: one reload once the daemon serves (not ignored: the config may have changed after it was
  read, and a reload of an unchanged config changes nothing).

What stays unprotected is what runs before ``cmd_run`` can: the interpreter's own start, the import of
``daemon.cli`` and building its argument parser (about 0.2 s on the 2-core CPU machine).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Protocol

__all__ = ["StartupSignals", "install_daemon_handlers"]

log = logging.getLogger("trtstream")

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Controllable(Protocol):
    def request_stop(self) -> None: ...

    def request_reload(self) -> None: ...


def install_daemon_handlers(daemon: Controllable, origin: str) -> None:
    """SIGTERM and SIGINT stop the daemon, SIGHUP reloads ``origin``; the handlers only set events."""

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        daemon.request_stop()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGHUP: reloading %s", origin)
        daemon.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hangup)


class StartupSignals:
    """Records SIGTERM, SIGINT and SIGHUP until the daemon exists. Its handlers run in the main thread,
    which is also the only one that reads what they recorded (before any other thread exists)."""

    def __init__(self) -> None:
        self.stop: signal.Signals | None = None
        self.hangup = False

    @classmethod
    def install(cls) -> StartupSignals:
        recorder = cls()
        for signum in _HANDLED:
            signal.signal(signum, recorder._record)
        return recorder

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.hangup = True
        elif self.stop is None:
            self.stop = signal.Signals(signum)

    def hand_over(self, daemon: Controllable, origin: str) -> None:
        """Install the daemon's handlers, then replay what arrived before (a signal between the two goes
        to the new handlers, so none is lost)."""
        install_daemon_handlers(daemon, origin)
        if self.stop is not None:
            log.info("received %s during start-up: stopping before anything starts", self.stop.name)
            daemon.request_stop()
        elif self.hangup:
            log.info("received SIGHUP during start-up: %s is read again once the daemon serves", origin)
            daemon.request_reload()
