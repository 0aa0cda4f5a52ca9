"""One reader thread per source: open, read, pace, reconnect, end.

The reader is an explicit state machine (``SourceState``); every transition goes through
``_set_state`` which logs it and updates the source's stats. A live source that fails is reopened
after an exponential, jittered backoff waited out on the stop event (never a blind sleep); a file that
cannot be opened fails at once; a file at its end either loops or ends. In every case the reader closes
its queue with a reason, so the batcher publishes an end-of-stream message after the last frame, and
nothing a reader does can stop the other sources.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum
from typing import Callable

from .backoff import Backoff
from .capture import FrameProducer, open_producer
from .config import DropPolicy, SourceConfig, SourceKind
from .entities import Frame, release_image
from .errors import SourceError
from .framequeue import FrameQueue
from .redact import mask_text
from .stats import SourceStats
from .threadname import name_this_thread

__all__ = ["SourceState", "SourceReader"]

log = logging.getLogger("trtstream.sources")

ProducerFactory = Callable[..., FrameProducer]  # (config, stop=Event) -> producer


class SourceState(str, Enum):
    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    BACKOFF = "backoff"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"


_TERMINAL = {SourceState.ENDED, SourceState.FAILED, SourceState.STOPPED}


class SourceReader:
    """Reads one source into its queue on a thread named ``capture:<id>``."""

    def __init__(
        self,
        config: SourceConfig,
        queue: FrameQueue,
        stats: SourceStats,
        producer_factory: ProducerFactory = open_producer,
    ):
        self.config = config
        self.queue = queue
        self.stats = stats
        self._open = producer_factory
        self._stop = threading.Event()
        self._state = SourceState.STARTING
        self._thread = threading.Thread(target=self._run, name=f"capture:{config.id}", daemon=True)
        self._backoff = Backoff(config.reconnect.initial_delay_s, config.reconnect.max_delay_s)
        self._next_index = 0
        self._frame_size: tuple[int, int] | None = None  # (width, height) of the last frame read
        self._log = log.getChild(config.id)

    @property
    def state(self) -> SourceState:
        return self._state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking frames now: close the queue (what is queued still drains) and end the thread,
        which returns from a blocking read within the source's read timeout."""
        self._stop.set()
        self.queue.close("shutdown")

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_state(self, state: SourceState, detail: str | None = None) -> None:
        if state is self._state:
            return
        self._state = state
        self.stats.state = state.value
        if detail:
            detail = mask_text(detail)
            self.stats.last_error = detail if state in (SourceState.BACKOFF, SourceState.FAILED) else self.stats.last_error
        level = logging.WARNING if state in (SourceState.BACKOFF, SourceState.FAILED) else logging.INFO
        self._log.log(level, "source %s: %s%s", self.config.id, state.value, f" ({detail})" if detail else "")

    def _run(self) -> None:
        name_this_thread()
        reason, detail = "shutdown", None
        try:
            reason, detail = self._loop()
        except Exception as exc:  # a bug must end this source, never the daemon
            self._log.exception("source %s: reader crashed", self.config.id)
            reason, detail = "error", mask_text(f"{type(exc).__name__}: {exc}")
            self._set_state(SourceState.FAILED, detail)
        finally:
            if self._state not in _TERMINAL:
                self._set_state(SourceState.STOPPED)
            self.queue.close(reason, detail)

    def _loop(self) -> tuple[str, str | None]:
        """Returns the end-of-stream reason and detail."""
        attempts_in_a_row = 0
        while not self._stop.is_set():
            self._set_state(SourceState.CONNECTING)
            try:
                producer = self._open(self.config, stop=self._stop)
            except SourceError as exc:
                attempts_in_a_row += 1
                limit = self.config.reconnect.max_attempts
                if not exc.retryable or (limit and attempts_in_a_row >= limit):
                    self._set_state(SourceState.FAILED, str(exc))
                    return "error", mask_text(str(exc))
                if not self._wait_backoff(str(exc)):
                    break
                continue
            try:
                outcome = self._read_frames(producer)
            finally:
                producer.close()
            if outcome is not None:
                return outcome
            attempts_in_a_row = 0
            self.stats.reconnects += 1
            if not self._wait_backoff("stream interrupted: no frame could be read"):
                break
        self._set_state(SourceState.STOPPED)
        return "shutdown", None

    def _wait_backoff(self, why: str) -> bool:
        delay = self._backoff.next_delay()
        self._set_state(SourceState.BACKOFF, f"{why}; retrying in {delay:.1f}s")
        return not self._stop.wait(delay)

    def _sleep_unless_stopped(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if stopped (True then). A paced reader sleeps once per frame:
        ``time.sleep`` is one C call, where ``Event.wait`` runs a Python-level ``Condition`` (a lock made
        per call) on the GIL that a hundred readers share. Stop is seen within 50 ms."""
        end = time.monotonic() + delay
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True

    def _note_size(self, image) -> None:
        """Log once at info when the frame size changes (a camera reconfigured, a file of joined clips).
        Each frame carries its own size to the pipelines, which letterbox it by that size, and to the
        message's ``frame.width``/``height``; nothing downstream assumes the first frame's."""
        size = (int(image.shape[1]), int(image.shape[0]))
        if size != self._frame_size:
            if self._frame_size is not None:
                self._log.info("source %s: frame size changed from %dx%d to %dx%d", self.config.id, *self._frame_size, *size)
            self._frame_size = size

    def _read_frames(self, producer: FrameProducer) -> tuple[str, str | None] | None:
        """Read until the end, an error or stop. None means 'reconnect'; otherwise the end reason."""
        ends_by_itself = self.config.ends_by_itself  # files and finite GStreamer pipelines: their end is an end
        paced = self.config.pace or self.config.resolved_kind is SourceKind.SYNTHETIC  # a test pattern acts as a camera
        pace_interval = 1.0 / producer.fps if paced and producer.fps else None
        paced_start: float | None = None
        paced_count = 0
        got_any = False
        skips = self.config.skip_when_full and self.queue.policy is DropPolicy.DROP_OLDEST
        fps = producer.fps
        self.queue.set_frame_interval(1.0 / fps if fps and 1.0 <= fps <= 240.0 else None)  # 90000 and the like: a stream's time base, not its rate
        while not self._stop.is_set():
            if self.config.max_frames is not None and self._next_index >= self.config.max_frames:
                self._set_state(SourceState.ENDED)
                return "max_frames", None
            if pace_interval is not None and paced_start is not None:  # paced: each frame is due before it is read (or gone past)
                now = time.monotonic()
                due = paced_start + paced_count * pace_interval
                paced_count += 1
                if due > now and self._sleep_unless_stopped(due - now):
                    break
            grabbed = producer.grab()  # a camera's grab waits for its next frame: decide after it, on the queue as it is then
            skipped = grabbed and skips and got_any and self.queue.is_full()  # it would only push out another: never converted
            image, pts = producer.retrieve() if grabbed and not skipped else (None, None)
            if not skipped and image is None:
                if ends_by_itself:
                    if self.config.loop and got_any and producer.rewind():
                        got_any = False
                        continue
                    self._set_state(SourceState.ENDED)
                    return "end_of_file", None
                return None  # a live source stopped delivering: reconnect
            if not got_any:
                got_any = True
                self._set_state(SourceState.RUNNING)
                self._backoff.reset()
            if not skipped:
                self._note_size(image)
            if pace_interval is not None and paced_start is None:  # the first frame: the clock starts now
                paced_start = time.monotonic()
                paced_count = 1
            if skipped:
                self._next_index += 1  # it was captured (and dropped): indexes count what the camera sent
                self.queue.count_skipped()
                self.stats.frames_captured += 1
                continue
            frame = Frame(self.config.id, self._next_index, pts, image, time.time(), time.monotonic())
            self._next_index += 1
            if not self.queue.put(frame, self._stop):
                release_image(frame)
                break  # closed by stop(): this frame was never accepted, so it is not counted
            self.stats.frames_captured += 1  # its drops are counted by the queue, which also drops at the batcher's turn
        self._set_state(SourceState.STOPPED)
        return "shutdown", None
