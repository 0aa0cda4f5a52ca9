"""The systemd watchdog decision: ping ``WATCHDOG=1`` only while the daemon demonstrably makes progress.

A thread that merely pings on a timer proves that one thread is alive, not that frames flow. Here the
decision is a pure object, :class:`WatchdogGate`, fed monotonic counters (frames captured, dropped,
finished, published, publisher messages) and per-source states. It says healthy when frames go all
the way through (every frame taken is finished and every result is published within ``stall_s``) or
when nothing is expected (every source is idle for a legitimate reason: ended, connecting, backing
off). A hung GPU call, a deadlocked batcher or a stuck publisher leaves frames waiting, the gate says
unhealthy, :class:`WatchdogPinger` stops pinging, and systemd restarts the daemon after ``WatchdogSec``.

Backlogs are counted, not guessed from timing: every captured frame ends as dropped (drop_oldest),
inferred or failed, so ``captured - dropped - inferred - failed`` is exactly the number of frames
queued or in flight. Idle periods therefore never look like stalls, and a stall is measured from the
moment work was waiting and nothing finished. The publisher side over-counts its drops (heartbeat
drops are included), which can only hide a stall, never invent one: a false restart loop of an idle
daemon is the worse failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .notify import Notifier
from .stats import PipelineStats, PublisherStats, SourceStats

__all__ = ["Progress", "WatchdogGate", "WatchdogPinger", "progress_from_stats", "IDLE_STATES"]

log = logging.getLogger("trtstream.watchdog")

# Source states in which no frame is expected; "failed" gave up for good, and restarting the daemon
# would only repeat the same failure in a loop.
IDLE_STATES = frozenset({"starting", "connecting", "backoff", "ended", "failed", "stopped"})


@dataclass(frozen=True, slots=True)
class Progress:
    """Counters since start (monotonic) and the state of each source, read at one moment."""

    captured: int = 0  # frames accepted into the source queues
    dropped: int = 0  # frames discarded by a drop_oldest queue
    inferred: int = 0  # frames with a decoded result
    failed: int = 0  # frames that failed preprocessing, inference or postprocessing
    published: int = 0  # results sent by the publisher thread
    publish_dropped: int = 0  # results the publisher dropped (queue full, socket would block)
    messages: int = 0  # every message the publisher thread handled, heartbeats included
    sources: Mapping[str, str] = field(default_factory=dict)  # source id -> state
    source_captured: Mapping[str, int] = field(default_factory=dict)  # source id -> frames captured


def progress_from_stats(
    sources: Mapping[str, SourceStats], pipeline: PipelineStats | None, publisher: PublisherStats | None
) -> Progress:
    """A :class:`Progress` from the daemon's stats objects (read without locks: every counter has one
    writer and only grows, so a torn read is at worst a moment old)."""
    stats = list(sources.values())
    publish_dropped = (publisher.dropped_queue_full + publisher.dropped_socket) if publisher else 0
    return Progress(
        captured=sum(s.frames_captured for s in stats),
        dropped=sum(s.frames_dropped for s in stats),
        inferred=sum(s.frames_inferred for s in stats),
        failed=sum(s.inference_errors for s in stats),
        published=sum(s.frames_published for s in stats),
        publish_dropped=publish_dropped,
        messages=(publisher.sent + publisher.dropped_socket) if publisher else 0,
        sources={s.source_id: s.state for s in stats},
        source_captured={s.source_id: s.frames_captured for s in stats},
    )


class WatchdogGate:
    """Decides, from successive :class:`Progress` readings, whether the daemon is making progress.

    ``stall_s``: how long work may wait without anything finishing. Feed it at least twice per
    ``stall_s`` (the pinger does). ``expect_messages``: the publisher thread sends a heartbeat every
    ``publisher.heartbeat_interval_s``, so ``stall_s`` without any message means it is stuck; turn
    this off only when ``stall_s`` is shorter than the heartbeat interval.
    """

    def __init__(self, stall_s: float = 20.0, *, expect_messages: bool = True):
        if stall_s <= 0:
            raise ValueError("stall_s must be > 0")
        self.stall_s = stall_s
        self._expect_messages = expect_messages
        self._last: Progress | None = None
        self._fed_at: float | None = None
        self._messages_at = 0.0
        self._input_waiting_since: float | None = None
        self._output_waiting_since: float | None = None
        self._failing_since: float | None = None
        self._failed_at = 0.0
        self._source_active_at: dict[str, float] = {}  # last frame, or when it started running

    def feed(self, now: float, progress: Progress) -> None:
        first = self._last is None  # the first reading: whatever is waiting starts waiting now
        last = self._last or progress
        if first or progress.messages != last.messages:
            self._messages_at = now
        finished_moved = first or (progress.inferred + progress.failed) != (last.inferred + last.failed)
        out_moved = first or (progress.published + progress.publish_dropped) != (last.published + last.publish_dropped)
        self._input_waiting_since = _waiting(now, _input_backlog(progress), finished_moved, self._input_waiting_since)
        self._output_waiting_since = _waiting(now, _output_backlog(progress), out_moved, self._output_waiting_since)
        if progress.inferred != last.inferred:
            self._failing_since = None
        elif progress.failed != last.failed:
            if self._failing_since is None or now - self._failed_at > self.stall_s:
                self._failing_since = now  # a new streak: failures an hour apart are not one long failure
            self._failed_at = now
        for sid, state in progress.sources.items():
            frames = progress.source_captured.get(sid, 0)
            became_running = state == "running" and last.sources.get(sid) != "running"
            if sid not in self._source_active_at or became_running or frames != last.source_captured.get(sid, 0):
                self._source_active_at[sid] = now
        self._last, self._fed_at = progress, now

    def healthy(self, now: float) -> tuple[bool, str]:
        """(ping?, why) at ``now`` (same clock as :meth:`feed`)."""
        progress, stall = self._last, self.stall_s
        if progress is None or self._fed_at is None:
            return False, "no progress reported yet"
        if now - self._fed_at > stall:
            return False, f"no progress report for {now - self._fed_at:.0f}s"
        if self._input_waiting_since is not None and now - self._input_waiting_since > stall:
            return False, (
                f"inference stalled: {_input_backlog(progress)} frame(s) waiting and none finished "
                f"for {now - self._input_waiting_since:.0f}s"
            )
        if self._failing_since is not None and now - self._failing_since > stall and now - self._failed_at <= stall:
            return False, f"every frame failed for {now - self._failing_since:.0f}s"
        if self._output_waiting_since is not None and now - self._output_waiting_since > stall:
            return False, (
                f"publisher stalled: {_output_backlog(progress)} result(s) not published "
                f"for {now - self._output_waiting_since:.0f}s"
            )
        if self._expect_messages and now - self._messages_at > stall:
            return False, f"publisher silent: no message (not even a heartbeat) for {now - self._messages_at:.0f}s"
        return self._sources_verdict(now, progress)

    def _sources_verdict(self, now: float, progress: Progress) -> tuple[bool, str]:
        running = [sid for sid, state in progress.sources.items() if state == "running"]
        silent = {sid: now - self._source_active_at.get(sid, now) for sid in running}
        silent = {sid: age for sid, age in silent.items() if age > self.stall_s}
        flowing = [sid for sid in running if sid not in silent]
        unknown = [f"{sid} {state}" for sid, state in progress.sources.items() if state != "running" and state not in IDLE_STATES]
        note = "; " + ", ".join(f"{sid} running without a frame for {age:.0f}s" for sid, age in silent.items()) if silent else ""
        if flowing:
            return True, f"frames flowing ({len(flowing)} of {len(progress.sources)} source(s)){note}"
        if silent:
            return False, "no frames" + note
        if unknown:
            return False, "sources in an unexpected state: " + ", ".join(unknown)
        states = ", ".join(f"{sid} {state}" for sid, state in progress.sources.items()) or "no sources"
        return True, f"all sources idle ({states})"


def _waiting(now: float, backlog: int, moved: bool, since: float | None) -> float | None:
    """When the current wait began: None without a backlog, restarted whenever the downstream moves."""
    if backlog <= 0:
        return None
    if since is None or moved:
        return now
    return since


def _input_backlog(p: Progress) -> int:
    return p.captured - p.dropped - p.inferred - p.failed


def _output_backlog(p: Progress) -> int:
    return p.inferred - p.published - p.publish_dropped


class WatchdogPinger:
    """Feeds the gate and sends ``WATCHDOG=1`` on a thread named ``watchdog`` while the gate says healthy.

    It ticks every ``min(interval_s, stall_s) / 2``: at least twice per ``WatchdogSec`` and twice per
    stall window. When it stops pinging it logs the reason once (and puts it in ``STATUS=``, so
    ``systemctl status`` shows why a restart is coming); when progress resumes it logs that once too.
    ``tick()`` is the whole step, so tests drive it with a fake clock and no thread.
    """

    def __init__(
        self,
        notifier: Notifier,
        gate: WatchdogGate,
        progress: Callable[[], Progress],
        interval_s: float,
        *,
        status: Callable[[], str | None] | None = None,
        on_change: Callable[[bool, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._notifier = notifier
        self._gate = gate
        self._progress = progress
        self._status = status
        self._on_change = on_change
        self._clock = clock
        self.period_s = min(interval_s, gate.stall_s) / 2
        self.healthy: bool | None = None
        self.reason = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def tick(self) -> bool:
        """Feed the gate once and ping if healthy; returns whether ``WATCHDOG=1`` was sent."""
        now = self._clock()
        try:
            self._gate.feed(now, self._progress())
            healthy, reason = self._gate.healthy(now)
        except Exception as exc:  # a broken progress reading must not look like progress
            healthy, reason = False, f"progress check failed: {type(exc).__name__}: {exc}"
        if healthy != self.healthy:
            if healthy:
                log.log(logging.INFO if self.healthy is None else logging.WARNING, "feeding the systemd watchdog: %s", reason)
            else:
                log.error("not feeding the systemd watchdog (a restart follows unless progress resumes): %s", reason)
            self.healthy, self.reason = healthy, reason
            if self._on_change is not None:
                self._on_change(healthy, reason)
        self.reason = reason
        if not healthy:
            self._notifier.status(f"watchdog: {reason}")
            return False
        try:
            status = self._status() if self._status is not None else None
        except Exception:  # a status line is decoration; the ping is what matters
            log.debug("watchdog status line failed", exc_info=True)
            status = None
        return self._notifier.watchdog(status)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # never let the watchdog thread die silently: that is a restart
                log.exception("watchdog tick failed")
            if self._stop.wait(self.period_s):
                return
