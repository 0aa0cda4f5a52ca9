"""The watchdog decision (daemon/watchdog.py): the gate as a table of scenarios on a fake clock, the
pinger driven tick by tick on a fake clock and then as a real thread pinging a real notify socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from daemon.notify import Notifier
from daemon.stats import PipelineStats, PublisherStats, SourceStats
from daemon.watchdog import Progress, WatchdogGate, WatchdogPinger, progress_from_stats

from .test_notify import NotifySocket

STALL = 10.0


class Flow:
    """The counters a running daemon would show, moved by what happens to frames."""

    def __init__(self, *sources: str, state: str = "running"):
        self.captured = self.dropped = self.inferred = self.failed = 0
        self.published = self.publish_dropped = self.messages = 0
        self.states = {s: state for s in sources or ("cam1",)}
        self.per_source = {s: 0 for s in self.states}

    def frames(self, n: int = 5, source: str = "cam1", *, dropped: int = 0, finish: bool = True, fail: bool = False, publish: bool = True) -> None:
        self.captured += n
        self.per_source[source] += n
        self.dropped += dropped
        taken = n - dropped
        if finish and fail:
            self.failed += taken
        elif finish:
            self.inferred += taken
            if publish:
                self.published += taken

    def progress(self) -> Progress:
        return Progress(
            captured=self.captured,
            dropped=self.dropped,
            inferred=self.inferred,
            failed=self.failed,
            published=self.published,
            publish_dropped=self.publish_dropped,
            messages=self.messages,
            sources=dict(self.states),
            source_captured=dict(self.per_source),
        )


Scenario = Callable[[Flow, Callable[[float], None]], float]


def run(flow: Flow, feed, start: float, stop: float, step: float = 2.0, *, heartbeat: bool = True, **frames) -> None:
    """Feed every ``step`` seconds in [start, stop), moving frames (unless frames=None) and heartbeats."""
    t = start
    while t < stop:
        if frames.get("n", 5):
            flow.frames(**frames)
        if heartbeat:
            flow.messages += 1
        feed(t)
        t += step


def flowing(flow, feed):
    run(flow, feed, 0, 60)
    return 60


def inference_hung(flow, feed):
    run(flow, feed, 0, 22)
    flow.frames(5, finish=False)  # a batch goes in and never comes back
    run(flow, feed, 22, 40, dropped=5, finish=False)  # the camera keeps delivering; the queue drops
    return 40


def inference_hung_not_yet(flow, feed):
    inference_hung(flow, lambda t: feed(t) if t <= 30 else None)
    return 30


def ended_and_drained(flow, feed):
    run(flow, feed, 0, 20)
    flow.states["cam1"] = "ended"
    run(flow, feed, 20, 300, n=0)
    return 300


def ended_with_a_frame_stuck(flow, feed):
    run(flow, feed, 0, 20)
    flow.frames(1, finish=False)
    flow.states["cam1"] = "ended"
    run(flow, feed, 20, 300, n=0)
    return 300


def reconnecting_for_minutes(flow, feed):
    for t in range(0, 600, 2):
        flow.states["cam1"] = "backoff" if t % 10 else "connecting"
        flow.messages += 1
        feed(t)
    return 600


def publisher_stuck(flow, feed):
    run(flow, feed, 0, 20)
    run(flow, feed, 20, 40, publish=False, heartbeat=False)
    return 40


def publisher_silent_while_idle(flow, feed):
    run(flow, feed, 0, 20)
    flow.states["cam1"] = "ended"
    run(flow, feed, 20, 40, n=0, heartbeat=False)
    return 40


def every_frame_fails(flow, feed):
    run(flow, feed, 0, 20)
    run(flow, feed, 20, 40, fail=True)
    return 40


def failures_then_the_source_ends(flow, feed):
    run(flow, feed, 0, 20)
    run(flow, feed, 20, 26, fail=True)
    flow.states["cam1"] = "ended"
    run(flow, feed, 26, 300, n=0)
    return 300


def two_failures_an_hour_apart(flow, feed):
    run(flow, feed, 0, 20)
    flow.frames(1, fail=True)
    flow.states["cam1"] = "backoff"
    run(flow, feed, 20, 3600, step=5, n=0)
    flow.states["cam1"] = "running"
    flow.frames(1, fail=True)
    flow.messages += 1
    feed(3600)
    return 3601


def one_of_two_sources_frozen(flow, feed):
    flow.states["cam2"] = "running"
    flow.per_source["cam2"] = 0
    run(flow, feed, 0, 60)  # only cam1 delivers
    return 60


def the_only_source_frozen(flow, feed):
    run(flow, feed, 0, 10)
    run(flow, feed, 10, 40, n=0)
    return 40


def a_frame_after_a_long_idle(flow, feed):
    flow.states["cam1"] = "connecting"
    run(flow, feed, 0, 100, n=0)
    flow.states["cam1"] = "running"
    flow.frames(1, finish=False)
    flow.messages += 1
    feed(100)
    return 101


def heavy_drops_but_progress(flow, feed):
    run(flow, feed, 0, 60, n=10, dropped=8)
    return 60


def unexpected_state(flow, feed):
    flow.states["cam1"] = "confused"
    run(flow, feed, 0, 20, n=0)
    return 20


def never_fed(flow, feed):
    return 5


def stale_feed(flow, feed):
    flow.messages += 1
    feed(0)
    return 30


@pytest.mark.parametrize(
    ("scenario", "ok", "reason"),
    [
        (flowing, True, "frames flowing (1 of 1 source(s))"),
        (inference_hung, False, "inference stalled"),
        (inference_hung_not_yet, True, "frames flowing"),
        (ended_and_drained, True, "all sources idle (cam1 ended)"),
        (ended_with_a_frame_stuck, False, "inference stalled: 1 frame(s) waiting"),
        (reconnecting_for_minutes, True, "all sources idle"),
        (publisher_stuck, False, "publisher stalled"),
        (publisher_silent_while_idle, False, "publisher silent"),
        (every_frame_fails, False, "every frame failed"),
        (failures_then_the_source_ends, True, "all sources idle"),
        (two_failures_an_hour_apart, True, "frames flowing"),
        (one_of_two_sources_frozen, True, "cam2 running without a frame"),
        (the_only_source_frozen, False, "no frames; cam1 running without a frame"),
        (a_frame_after_a_long_idle, True, "frames flowing"),
        (heavy_drops_but_progress, True, "frames flowing"),
        (unexpected_state, False, "unexpected state: cam1 confused"),
        (never_fed, False, "no progress reported yet"),
        (stale_feed, False, "no progress report for 30s"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_gate(scenario: Scenario, ok: bool, reason: str):
    gate = WatchdogGate(STALL)
    flow = Flow()
    now = scenario(flow, lambda t: gate.feed(t, flow.progress()))
    healthy, why = gate.healthy(now)
    assert (healthy, reason in why) == (ok, True), why


def test_progress_from_stats():
    cam = SourceStats("cam1", "rtsp://cam", "stream", state="running", frames_captured=10, frames_dropped=2, frames_inferred=7, inference_errors=1, frames_published=6)
    door = SourceStats("door", "file", "file", state="ended", frames_captured=3, frames_inferred=3, frames_published=3)
    publisher = PublisherStats(sent=40, dropped_queue_full=1, dropped_socket=2)
    progress = progress_from_stats({"cam1": cam, "door": door}, PipelineStats(), publisher)
    assert progress == Progress(
        captured=13, dropped=2, inferred=10, failed=1, published=9, publish_dropped=3, messages=42,
        sources={"cam1": "running", "door": "ended"}, source_captured={"cam1": 10, "door": 3},
    )
    assert progress_from_stats({}, None, None).messages == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_pinger_stops_pinging_when_progress_stops_fake_clock(notify_socket, caplog):
    flow, clock = Flow(), FakeClock()
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    changes: list[tuple[bool, str]] = []
    pinger = WatchdogPinger(
        notifier, WatchdogGate(STALL), flow.progress, interval_s=30, status=lambda: "25 fps", on_change=lambda *c: changes.append(c), clock=clock
    )
    assert pinger.period_s == 5.0  # half the shorter of WatchdogSec and the stall window
    for _ in range(4):
        flow.frames(5)
        flow.messages += 1
        assert pinger.tick()
        assert notify_socket.receive() == ["WATCHDOG=1", "STATUS=25 fps"]
        clock.now += pinger.period_s
    flow.frames(5, finish=False)  # the GPU call hangs; the camera goes on
    pinged = []
    for _ in range(4):
        flow.frames(5, dropped=5, finish=False)
        flow.messages += 1
        pinged.append(pinger.tick())
        clock.now += pinger.period_s
    # the wait is first seen at the tick after the hang (t=20); past 10 s of it (t=35) the pings stop
    assert pinged == [True, True, True, False], "pings continue within the stall window, then stop"
    datagrams = notify_socket.pending()
    assert datagrams[:3] == [["WATCHDOG=1", "STATUS=25 fps"]] * 3 and len(datagrams) == 4
    assert datagrams[3][0].startswith("STATUS=watchdog: inference stalled: 5 frame(s) waiting and none finished for 15s")
    assert [c[0] for c in changes] == [True, False]
    assert len([r for r in caplog.records if "not feeding the systemd watchdog" in r.message]) == 1, "the reason is logged once"
    flow.inferred += 10  # it recovers
    flow.published += 10
    assert pinger.tick() and changes[-1][0] is True


def test_pinger_thread_against_a_real_notify_socket(notify_socket):
    """A real pinger thread with a 0.2 s WatchdogSec: pings while frames flow, goes quiet when inference
    hangs, pings again when it recovers. Each phase waits for an event or a datagram, with deadlines."""
    lock = threading.Lock()
    flow = Flow()
    hung = threading.Event()

    def progress() -> Progress:
        with lock:
            flow.messages += 1
            flow.frames(2, dropped=2 if hung.is_set() else 0, finish=not hung.is_set())
            return flow.progress()

    became: dict[bool, threading.Event] = {True: threading.Event(), False: threading.Event()}
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    pinger = WatchdogPinger(notifier, WatchdogGate(0.3), progress, interval_s=0.2, on_change=lambda ok, _why: became[ok].set())
    pinger.start()
    try:
        assert became[True].wait(5)
        for _ in range(3):
            assert notify_socket.receive() == ["WATCHDOG=1"]
        with lock:
            flow.frames(2, finish=False)
            hung.set()
        assert became[False].wait(5), "the pinger never noticed the stall"
        notify_socket.pending()
        became[True].clear()
        quiet_until = time.monotonic() + 4 * pinger.period_s
        notify_socket.sock.settimeout(pinger.period_s)
        while time.monotonic() < quiet_until:
            try:
                lines = notify_socket.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
            assert lines != ["WATCHDOG=1"] and lines[0].startswith("STATUS=watchdog: inference stalled")
        with lock:
            hung.clear()
            flow.inferred += 2
            flow.published += 2
        assert became[True].wait(5)
        deadline = time.monotonic() + 5
        while notify_socket.receive() != ["WATCHDOG=1"]:
            assert time.monotonic() < deadline
    finally:
        pinger.stop()


def test_a_failing_progress_reading_is_not_progress(notify_socket):
    def broken() -> Progress:
        raise RuntimeError("stats gone")

    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    pinger = WatchdogPinger(notifier, WatchdogGate(STALL), broken, interval_s=30, clock=FakeClock())
    assert not pinger.tick()
    assert notify_socket.receive() == ["STATUS=watchdog: progress check failed: RuntimeError: stats gone"]
