"""Analytics in worker processes (``daemon.analytics_processes`` > 0): trackers, zones and lines beside
the serving interpreter instead of in it.

Why: everything the daemon does in Python shares one GIL. Tracking is the largest piece of Python work
per frame after decoding: on the H200, with 32 sources, the pipeline with tracking on the completer ran at
0.49 x the untracked one, and with 96 NVDEC cameras the completer's hand-over took 100-145 s of 240 on
the slower machine starts (docs/benchmarks.md). A worker process has a GIL of its own and a core of its
own; what stays here is one pickled message per worker and batch each way, and one assignment per result.

How: each worker is ``python -m daemon.analytics.workers`` running the same :class:`Analytics` as the
completer would, on copies of the results (source id, frame index, capture time, shape, detections). A
source always goes to one worker (its tracker lives there): sources are dealt round robin as they first
appear. Per batch the completer :meth:`AnalyticsWorkers.submit`s each worker its part, and the scheduler's
hand-over thread :meth:`AnalyticsWorkers.collect`s the answers in the same order: each result's track
fields (written into its detections) and predicted boxes, the events and track messages, and the counters of the
sources touched. Worker k of N gives track ids k+1, k+1+N, ...: unique per daemon instance, never reused.

Snapshots (``[snapshots]``) need pixels, which never leave this process: the workers run without them,
and :meth:`collect` keeps the best pictures here from the annotated detections (the same
:class:`BestShots`), attaching them to the batch's messages.

A worker that dies or does not answer within ``ANSWER_TIMEOUT_S`` is replaced at once: the results of its
batch are published untracked (track fields null), its sources' tracks start again (new ids, counters
from zero), and each replacement is logged. One owner per side: the completer writes requests, the
hand-over thread reads answers (and replaces workers); reconfigure, from any thread, goes in through a
lock with the requests.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from ..childproc import PipeReader, child_environment, die_with_parent
from ..entities import EndOfStream, Frame, FrameResult, ImageShape
from .snapshots import BestShots
from .stage import Analytics, AnalyticsMessage, AnalyticsSettings, infer_this_frame

__all__ = ["AnalyticsWorkers", "ANSWER_TIMEOUT_S", "make_analytics"]

log = logging.getLogger("trtstream.analytics")

ANSWER_TIMEOUT_S = 10.0
"""A worker that has not answered a request this long after it was sent is taken for hung and replaced."""

COUNTERS_EVERY_S = 0.2
"""A worker sends its sources' counters (heartbeats, status, metrics) at most this often, and whole at each
source's end: unpickling them per batch was a visible share of the daemon's side."""

_HEAD = struct.Struct("<I")
_MAX_MESSAGE = 1 << 30
_UNTRACKED = {"track_id": None, "track_state": None, "track_age": None}


@dataclass(slots=True)
class _Part:
    """One worker's share of a submitted batch: which results (their positions in the batch) it got, and
    whether the request reached it (False: it was down; those results go out untracked)."""

    worker: "_Worker"
    generation: int  # the worker's generation it was sent to: a replaced worker's answers never come
    positions: list[int]
    sent: bool
    sent_at: float


class _Worker:
    """One worker process and its two pipes. ``generation`` changes when it is replaced, so an answer
    owed by the process that died is never awaited from its successor."""

    def __init__(self, index: int, count: int, settings: AnalyticsSettings, first_id: int):
        self.index, self.count = index, count
        self.generation = 0
        self.next_id = first_id
        self.sources: set[str] = set()
        self._start(settings)

    def part(self, positions: list[int], request: tuple) -> _Part:
        return _Part(self, self.generation, positions, self.send(request), time.monotonic())

    def _start(self, settings: AnalyticsSettings) -> None:
        self._errors = tempfile.TemporaryFile()  # its stderr: a file, so a chatty worker never blocks on it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon.analytics.workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._errors, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), env=child_environment(),
        )  # fmt: skip
        self._out = self.process.stdin
        self._fd = self.process.stdout.fileno()
        self._pipe = PipeReader(self._fd)
        self.alive = True
        self.send(("start", _without_pictures(settings), self.next_id, self.count, settings.snapshots.enabled))

    def send(self, request: tuple) -> bool:
        """Write one request (blocks while the pipe is full: the worker is behind, and that is the
        backpressure). False when the worker is gone."""
        if not self.alive:
            return False
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._out.write(_HEAD.pack(len(data)) + data)
            self._out.flush()
            return True
        except (OSError, ValueError):
            self.alive = False
            return False

    def receive(self, deadline: float) -> Any:
        """The next answer, or raise :class:`_WorkerLost` at the deadline or when the worker ended."""
        head = self._take(_HEAD.size, deadline)
        (size,) = _HEAD.unpack(head)
        if size > _MAX_MESSAGE:
            raise _WorkerLost(f"sent a message of {size} bytes")
        return pickle.loads(self._take(size, deadline))

    def _take(self, count: int, deadline: float) -> bytes:
        taken = self._pipe.take(count, deadline)  # late here is not late there: it looks once more past the deadline
        if taken is None:
            raise _WorkerLost("ended" if self._pipe.eof else f"did not answer within {ANSWER_TIMEOUT_S:g} s")
        return taken

    def replace(self, settings: AnalyticsSettings, why: str) -> None:
        """Stop this process (whatever state it is in) and start a new one with ``settings``: ids go on
        from the last ``next_id`` it reported (ids it gave out after that were never published)."""
        status = self.stop()
        said = self._last_error_line()
        self._errors.close()
        log.error("analytics worker %d %s (exit status %s)%s; replaced by a new one: the tracks of its %d source(s) "
                  "start again and their zone and line counters start from zero", self.index + 1, why, status,
                  f": {said}" if said else "", len(self.sources))  # fmt: skip
        self.generation += 1
        self.sources.clear()
        self._start(settings)

    def stop(self) -> int | None:
        """End the process: EOF on its input first (it exits by itself), then SIGKILL."""
        self.alive = False
        process = self.process
        try:
            self._out.close()
        except OSError:
            pass
        try:
            return process.wait(2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        finally:
            process.stdout.close()

    def _last_error_line(self) -> str:
        try:
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1][:300] if lines else ""

    def close(self) -> None:
        self.stop()
        self._errors.close()


class _WorkerLost(Exception):
    pass


def make_analytics(settings: AnalyticsSettings, processes: int) -> "Analytics | AnalyticsWorkers":
    """The analytics stage on the completer (``processes`` 0) or in that many worker processes: the one
    choice of where it runs, for the daemon and the benchmarks alike."""
    return AnalyticsWorkers(settings, processes) if processes else Analytics(settings)


class AnalyticsWorkers:
    """The analytics stage in ``count`` worker processes (see the module's docstring)."""

    runs_elsewhere = True

    def __init__(self, settings: AnalyticsSettings, count: int):
        if count < 1:
            raise ValueError("analytics workers: count must be at least 1")
        self._settings = settings
        self._infer_every = dict(settings.tracked)
        self._lock = threading.Lock()  # requests are written in one order: the completer's and reconfigure's
        self._workers = [_Worker(index, count, settings, first_id=index + 1) for index in range(count)]
        self._worker_of: dict[str, _Worker] = {}
        self._counters: dict[int, dict[str, Any]] = {}  # per worker index: its sources' counters (replaced whole)
        self._shots: dict[str, BestShots] = {}
        self._dealt = 0
        self._replaced = 0  # workers replaced (died or hung)
        self._untracked = 0  # results published untracked because their worker was lost

    @property
    def needs_pixels(self) -> bool:
        return self._settings.snapshots.enabled

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (tests, diagnostics)."""
        return [worker.process.pid for worker in self._workers]

    # -- any thread ------------------------------------------------------------------------------------------
    def should_infer(self, source_id: str, frame_index: int) -> bool:
        return infer_this_frame(self._infer_every, source_id, frame_index)

    def status(self) -> dict[str, Any]:
        """The heartbeat's ``analytics_workers``: how many, how often one was replaced, and what it cost."""
        return {"processes": len(self._workers), "replaced": self._replaced, "untracked_results": self._untracked}

    def snapshot(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for counters in list(self._counters.values()):
            merged.update(counters)
        return merged

    def reconfigure(self, settings: AnalyticsSettings) -> None:
        """A reload's zones, lines and tracked sources: each worker applies them before its next batch,
        as :meth:`Analytics.reconfigure` does."""
        with self._lock:
            self._settings = settings
            self._infer_every = dict(settings.tracked)
            for worker in self._workers:
                worker.send(("reconfigure", _without_pictures(settings), settings.snapshots.enabled))
            if not settings.snapshots.enabled:
                self._shots = {}

    # -- the completer -----------------------------------------------------------------------------------------
    def submit(self, results: list[FrameResult]) -> list[_Part]:
        """Send each worker its tracked sources' results of this batch (one request per worker)."""
        with self._lock:  # the dealing too: a replacement (hand-over thread) takes sources back
            tracked = self._settings.tracked
            by_worker: dict[int, tuple[_Worker, list[int], list[tuple]]] = {}
            for position, result in enumerate(results):
                frame = result.frame
                source_id = frame.source_id
                if source_id not in tracked:
                    continue
                worker = self._worker_of.get(source_id)
                if worker is None:
                    worker = self._worker_of[source_id] = self._workers[self._dealt % len(self._workers)]
                    worker.sources.add(source_id)
                    self._dealt += 1
                part = by_worker.get(worker.index)
                if part is None:
                    part = by_worker[worker.index] = (worker, [], [])
                shape = frame.image.shape
                part[1].append(position)
                part[2].append((source_id, frame.index, frame.t_captured, result.inferred, shape[0], shape[1],
                                result.results.get("detections", [])))  # fmt: skip
            return [worker.part(positions, ("batch", items)) for worker, positions, items in by_worker.values()]

    def submit_end(self, end: EndOfStream) -> tuple[_Part, EndOfStream] | None:
        with self._lock:
            worker = self._worker_of.pop(end.source_id, None)
            if worker is None:
                return None
            worker.sources.discard(end.source_id)
            return worker.part([], ("end", end.source_id, end.reason)), end

    # -- the hand-over thread ----------------------------------------------------------------------------------
    def collect(self, parts: list[_Part], results: list[FrameResult]) -> list[AnalyticsMessage]:
        messages: list[AnalyticsMessage] = []
        live: dict[str, list[int]] = {}
        for part in parts:
            answer = self._answer(part)
            if answer is None:
                for position in part.positions:
                    _mark_untracked(results[position])
                self._untracked += len(part.positions)
                continue
            fields, found, counters, replace_counters, live_ids, next_id = answer
            part.worker.next_id = next_id
            for position, (tracks, predicted) in zip(part.positions, fields):
                detections = results[position].results.setdefault("detections", [])
                for detection, (track_id, state, age) in zip(detections, tracks):
                    detection["track_id"] = track_id
                    detection["track_state"] = state
                    detection["matched_now"] = True
                    detection["track_age"] = age
                if predicted:
                    detections.extend(predicted)
            messages.extend(found)
            self._merge_counters(part.worker.index, counters, replace_counters)
            if live_ids:
                live.update(live_ids)
        if self._settings.snapshots.enabled:
            messages = self._pictures(results, messages, live)
        return messages

    def collect_end(self, ticket: tuple[_Part, EndOfStream] | None) -> list[AnalyticsMessage]:
        if ticket is None:
            return []
        part, end = ticket
        answer = self._answer(part)
        shots = self._shots.pop(end.source_id, None)
        if answer is None:
            return []
        found, counters, next_id = answer
        part.worker.next_id = next_id
        self._merge_counters(part.worker.index, counters, True)
        if shots is not None:
            found = [_attach(message, shots) for message in found]
        return found

    def _answer(self, part: _Part) -> Any:
        """The worker's answer to ``part``, or None when it was down or is lost now (then replaced)."""
        worker = part.worker
        if part.generation != worker.generation:  # sent to a process replaced since
            return None
        if not part.sent:
            self._replace(worker, "could not take a request")
            return None
        try:
            return worker.receive(part.sent_at + ANSWER_TIMEOUT_S)
        except _WorkerLost as exc:
            self._replace(worker, str(exc))
            return None

    def _replace(self, worker: _Worker, why: str) -> None:
        worker.process.kill()  # first, without the lock: a completer blocked writing to it gets EPIPE and lets go
        with self._lock:
            for source_id in list(worker.sources):  # they are dealt again; the new worker starts them afresh
                self._worker_of.pop(source_id, None)
            self._counters.pop(worker.index, None)
            worker.replace(self._settings, why)
            self._replaced += 1

    def _merge_counters(self, index: int, counters: dict[str, Any], whole: bool) -> None:
        if whole:
            self._counters[index] = counters
        elif counters:
            self._counters[index] = {**self._counters.get(index, {}), **counters}

    def _pictures(self, results: list[FrameResult], messages: list[AnalyticsMessage],
                  live: dict[str, list[int]]) -> list[AnalyticsMessage]:
        """[snapshots] here, where the pixels are: each result's matched, tracked detections update its
        source's best pictures, the batch's messages get theirs, then tracks gone are forgotten."""
        config = self._settings.snapshots
        for result in results:
            frame = result.frame
            image = frame.image
            if not result.inferred or not isinstance(image, np.ndarray):  # host pixels only (not NVDEC frames)
                continue
            shots = self._shots.get(frame.source_id)
            if shots is None:
                if frame.source_id not in self._settings.tracked:
                    continue
                shots = self._shots[frame.source_id] = BestShots(config)
            shots.update([_Seen(d) for d in result.results.get("detections", []) if d.get("track_id") is not None and d.get("matched_now")],
                         image, frame.index)  # fmt: skip
        attached = [_attach(m, self._shots[m.source_id]) if m.source_id in self._shots else m for m in messages]
        for source_id, ids in live.items():
            shots = self._shots.get(source_id)
            if shots is not None:
                shots.keep_only(set(ids))
        return attached

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


@dataclass(slots=True)
class _Seen:
    """An annotated detection as :meth:`BestShots.update` reads a tracked object."""

    track_id: int
    matched_now: bool
    box: tuple[float, float, float, float]
    score: float

    def __init__(self, detection: dict[str, Any]):
        self.track_id, self.matched_now = detection["track_id"], True
        self.box, self.score = tuple(detection["box"]), detection["score"]


def _attach(message: AnalyticsMessage, shots: BestShots) -> AnalyticsMessage:
    picture = shots.snapshot(message.body.get("track_id"))
    return replace(message, attachment=picture) if picture is not None else message


def _mark_untracked(result: FrameResult) -> None:
    """A result whose worker was lost: published with null track fields, as an untracked detection is."""
    for detection in result.results.get("detections", []):
        detection.update(_UNTRACKED)
        detection["matched_now"] = True


def _without_pictures(settings: AnalyticsSettings) -> AnalyticsSettings:
    """What a worker runs: the same settings, snapshots off (they are kept where the pixels are)."""
    if not settings.snapshots.enabled:
        return settings
    return replace(settings, snapshots=settings.snapshots.model_copy(update={"enabled": False}))


# -- the worker ---------------------------------------------------------------------------------------------
def _read(source: BinaryIO) -> Any:
    head = source.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    (size,) = _HEAD.unpack(head)
    data = source.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _write(out: BinaryIO, answer: Any) -> None:
    data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEAD.pack(len(data)) + data)
    out.flush()


class _Serving:
    """The worker's side: one :class:`Analytics` over the results it is sent."""

    def __init__(self, settings: AnalyticsSettings, first_id: int, stride: int, live_ids: bool):
        self.analytics = Analytics(settings, first_id=first_id, id_stride=stride)
        self.analytics.keep_live_ids = live_ids
        self.reported: set[str] = set()
        self.counted_at = 0.0

    def batch(self, items: list[tuple]) -> tuple:
        results, counts = [], []
        for source_id, index, t_captured, inferred, height, width, detections in items:
            frame = Frame(source_id, index, None, ImageShape((height, width, 3)), t_captured, t_captured)
            results.append(FrameResult(frame, {"detections": detections}, 0.0, 0.0, 0, inferred=inferred))
            counts.append(len(detections))
        messages = self.analytics.process(results)
        snapshot = self.analytics.snapshot()
        whole = snapshot.keys() != self.reported
        now = time.monotonic()
        if whole:
            self.reported = set(snapshot)
            counters = snapshot
        elif now - self.counted_at >= COUNTERS_EVERY_S:  # heartbeats read them every few seconds, not every batch
            counters = {r.frame.source_id: snapshot[r.frame.source_id] for r in results if r.frame.source_id in snapshot}
        else:
            counters = {}
        if counters:
            self.counted_at = now
        live = None
        if self.analytics.keep_live_ids:
            live = {}
            for result in results:  # the last frame of each source in the batch says which tracks live
                live[result.frame.source_id] = self.analytics.live_ids(result.frame.source_id)
        # per result: each detection's track fields (matched_now is true for every detection the model gave),
        # and the predicted boxes the stage added: the daemon writes these into its own detections, which
        # costs it less than unpickling whole annotated ones
        fields = []
        for result, count in zip(results, counts):
            detections = result.results["detections"]
            fields.append(([(d["track_id"], d["track_state"], d["track_age"]) for d in detections[:count]], detections[count:]))
        return (fields, messages, counters, whole, live, self.analytics.next_id)

    def end(self, source_id: str, reason: str) -> tuple:
        messages = self.analytics.end(EndOfStream(source_id, reason))
        snapshot = self.analytics.snapshot()
        self.reported = set(snapshot)
        return messages, snapshot, self.analytics.next_id


def main() -> int:
    """The worker process: requests on stdin, answers on stdout, until stdin ends."""

    die_with_parent()
    source, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed by accident may corrupt the answers
    serving: _Serving | None = None
    while True:
        request = _read(source)
        if request is None:
            return 0
        kind = request[0]
        if kind == "start":
            serving = _Serving(request[1], request[2], request[3], request[4])
        elif kind == "reconfigure":
            serving.analytics.reconfigure(request[1])
            serving.analytics.keep_live_ids = request[2]
        elif kind == "batch":
            _write(out, serving.batch(request[1]))
        elif kind == "end":
            _write(out, serving.end(request[1], request[2]))
        else:
            raise SystemExit(f"analytics worker: unknown request {kind!r}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="analytics worker: %(message)s")
    raise SystemExit(main())
