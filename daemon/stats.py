"""Counters and latency windows, written by one stage each and read by the heartbeat.

Each counter has a single writer thread, so plain integer updates are safe under the GIL; readers take a
consistent-enough snapshot for monitoring. Latencies live in bounded deques (no growth over months).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SourceStats", "PipelineStats", "PublisherStats", "LatencyWindow", "RateMeter"]


class LatencyWindow:
    """The last ``size`` latencies in seconds; percentiles in milliseconds."""

    def __init__(self, size: int = 512):
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def snapshot(self) -> np.ndarray:
        """The latencies in the window now, in seconds (a copy, oldest first)."""
        with self._lock:
            return np.fromiter(self._values, dtype=np.float64)

    def percentiles_ms(self, *qs: float) -> dict[str, float] | None:
        with self._lock:
            if not self._values:
                return None
            values = np.fromiter(self._values, dtype=np.float64)
        return {f"p{int(q)}": round(float(np.percentile(values, q)) * 1000, 3) for q in qs}


class RateMeter:
    """Events per second between two successive readings (the heartbeat's fps)."""

    def __init__(self) -> None:
        self._last_count = 0
        self._last_time = time.monotonic()

    def rate(self, count: int) -> float:
        now = time.monotonic()
        elapsed = now - self._last_time
        rate = (count - self._last_count) / elapsed if elapsed > 0 else 0.0
        self._last_count, self._last_time = count, now
        return round(rate, 2)


class OverloadMeter:
    """Whether the daemon keeps up, between two readings (heartbeats): the frames its sources dropped
    because the pipeline did not take them in time, against the frames they captured, over every
    source. Drops happen at the sources by design (a full publisher queue makes inference wait, see
    ``publisher.queue_full_wait_s``), so this one fraction says how far over its capacity the daemon is
    run. Its only reader is the heartbeat's builder (the publisher thread)."""

    THRESHOLD = 0.01  # more than 1 % of the frames dropped: overloaded

    def __init__(self) -> None:
        # id(SourceStats) -> (that object, captured, dropped) at the last reading; holding the object keeps
        # its id from being reused by a new source's stats before the next reading
        self._last: dict[int, tuple["SourceStats", int, int]] = {}
        self._time = time.monotonic()

    def reading(self, sources: list["SourceStats"]) -> dict[str, Any]:
        """Per source, what it captured and dropped since the last reading (a source started or restarted
        by a reload has new stats: counted from zero), summed."""
        new_captured = new_dropped = 0
        last: dict[int, tuple["SourceStats", int, int]] = {}
        for source in sources:
            captured, dropped = source.frames_captured, source.frames_dropped
            _, before_captured, before_dropped = self._last.get(id(source), (source, 0, 0))
            new_captured += captured - before_captured
            new_dropped += dropped - before_dropped
            last[id(source)] = (source, captured, dropped)
        now = time.monotonic()
        elapsed = now - self._time
        self._last, self._time = last, now
        fraction = min(1.0, new_dropped / new_captured) if new_captured > 0 else 0.0
        return {
            "overloaded": fraction > self.THRESHOLD,
            "dropped_fraction": round(fraction, 4),
            "dropped_per_s": round(max(new_dropped, 0) / elapsed, 2) if elapsed > 0 else 0.0,
        }


@dataclass
class SourceStats:
    source_id: str
    uri: str  # masked
    kind: str
    state: str = "starting"
    frames_captured: int = 0
    frames_dropped: int = 0  # by the queue's drop policy
    frames_stale: int = 0  # of those, stale at the batcher's turn (the rest: pushed out of a full queue or gone past)
    frames_inferred: int = 0
    frames_published: int = 0
    inference_errors: int = 0
    reconnects: int = 0
    last_error: str | None = None  # masked
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    fps_meter: RateMeter = field(default_factory=RateMeter)

    def snapshot(self) -> dict:
        return {
            "id": self.source_id,
            "uri": self.uri,
            "kind": self.kind,
            "state": self.state,
            "frames_captured": self.frames_captured,
            "frames_dropped": self.frames_dropped,
            "frames_stale": self.frames_stale,
            "frames_inferred": self.frames_inferred,
            "frames_published": self.frames_published,
            "inference_errors": self.inference_errors,
            "reconnects": self.reconnects,
            "fps": self.fps_meter.rate(self.frames_published),
            "latency_ms": self.latency.percentiles_ms(50, 95, 99),
            "last_error": self.last_error,
        }


@dataclass
class BatcherSeconds:
    """Where the batcher thread's time goes, cumulative seconds (its only writer is the batcher). Read
    side by side they say what limits the pipeline: waiting for a slot = the device or the completer is
    behind; gathering = the sources are; staging and submitting = the batcher itself (wall time, so time
    spent waiting for the GIL counts too)."""

    waiting_for_slot: float = 0.0
    gathering: float = 0.0
    staging: float = 0.0
    submitting: float = 0.0


@dataclass
class CompleterSeconds:
    """Where the completer thread's time goes, cumulative seconds (its only writer is the completer):
    waiting for the device (the GPU, or ONNX Runtime's worker, is behind), postprocessing, and handing
    results to the publisher."""

    waiting_for_device: float = 0.0
    postprocessing: float = 0.0
    handing_over: float = 0.0


@dataclass
class PipelineStats:
    batches: int = 0
    frames: int = 0
    inference_errors: int = 0
    busy_slots: int = 0
    queued_frames: int = 0
    batcher: BatcherSeconds = field(default_factory=BatcherSeconds)
    completer: CompleterSeconds = field(default_factory=CompleterSeconds)

    def snapshot(self) -> dict:
        return {
            "batches": self.batches,
            "frames": self.frames,
            "mean_batch_size": round(self.frames / self.batches, 3) if self.batches else 0.0,
            "inference_errors": self.inference_errors,
            "busy_slots": self.busy_slots,
            "queued_frames": self.queued_frames,
            "seconds": {"batcher": _rounded(vars(self.batcher)), "completer": _rounded(vars(self.completer))},
        }


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in seconds.items()}


@dataclass
class PublisherStats:
    sent: int = 0
    dropped_queue_full: int = 0  # the publisher thread could not keep up
    dropped_socket: int = 0  # ZeroMQ refused the message (would block)
    queue_depth: int = 0
    queue_full_waits: int = 0  # hand-overs that waited for room (publisher.queue_full_wait_s): overload shed upstream

    def snapshot(self) -> dict:
        return {
            "sent": self.sent,
            "dropped_queue_full": self.dropped_queue_full,
            "dropped_socket": self.dropped_socket,
            "queue_depth": self.queue_depth,
            "queue_full_waits": self.queue_full_waits,
        }
