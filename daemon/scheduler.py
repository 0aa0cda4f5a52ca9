"""Batching, in-flight slots and in-order completion: the hot path between the queues and the publisher.

Two threads (three when the analytics run in worker processes: see ``Scheduler``). The **batcher** first acquires a free slot (blocking here is the backpressure: when every
slot is in flight, no frame is taken and the per-source queues apply their drop policies), and only
then gathers the batch from the multiplexer — as late as possible, as Triton's tensorrt backend does, so
a frame never waits in a formed batch where drop-oldest cannot reach it. It hands each frame to the
backend's ``stage`` (preprocessed on the CPU into the slot, or staged for the GPU: the backend was
configured for one or the other), submits the slot and queues it for completion. The **completer** waits for slots in submission order, decodes
results, hands them to the publisher and returns the slot. Submission order is per-source order, so
results and end-of-stream messages leave in the order the frames arrived, even with several slots in
flight. A failing batch is counted and reported; it never stops the pipeline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable, Protocol

import numpy as np

from .analytics.stage import AnalyticsMessage, AnalyticsStage
from .backends.base import InferenceBackend, Slot
from .entities import EndOfStream, Frame, FrameResult, drop_pixels, release_image
from .errors import BackendError
from .framequeue import Multiplexer
from .serving import ServingUnit
from .stats import PipelineStats, SourceStats
from .threadname import name_this_thread

__all__ = ["Scheduler"]

log = logging.getLogger("trtstream.scheduler")

# Outputs up to this size are copied off their slot so it is free before postprocessing (a batch of 32
# device-decoded frames is 48 KB; YOLOv3-tiny 416's raw fp32 outputs for 32 frames are 28 MB, not worth a copy).
_EARLY_RELEASE_COPY_BYTES = 4 << 20

ResultSink = Callable[[FrameResult | EndOfStream], None]
BatchSink = Callable[[list[FrameResult]], None]
EventSink = Callable[[list[AnalyticsMessage]], None]


class FrameTap(Protocol):
    """Something that wants some frames' pixels from completed batches (the live view, daemon/view/hub.py):
    ``capture`` runs before the batch lets go of them, ``offer`` once the analytics have run."""

    def capture(self, frames: list[Frame]) -> dict[int, Any]: ...

    def offer(self, results: list[FrameResult], captured: Mapping[int, Any]) -> None: ...


@dataclass(slots=True)
class _InFlight:
    backend: InferenceBackend
    slot: Slot | None
    frames: list[Frame]
    metas: list = field(default_factory=list)
    ends: list[EndOfStream] = field(default_factory=list)
    t_preprocessed: float = 0.0
    # (source id, message) of frames the batcher could not stage or submit: counted by the completer, the
    # only writer of the per-source error counters (two threads' += on one counter can lose counts)
    errors: list[tuple[str, str]] = field(default_factory=list)
    # frames the model skips (sources[].infer_every), each with the number of inferred frames before it in
    # this batch: published in their place, the tracker predicting them
    skipped: list[tuple[int, Frame]] = field(default_factory=list)
    # the pipeline that staged these frames: a unit switch can happen while this batch is postprocessed
    # (its slot is free by then), and the new unit's pipeline may read another model's outputs
    pipeline: Any = None


@dataclass(slots=True)
class _Handover:
    """A batch (or an end of stream) on its way from the completer to the hand-over thread, when the
    analytics run elsewhere: its results, the ticket of their analytics, the live view's pick of its
    frames, and the frames themselves when [snapshots] still need their pixels (else they went already)."""

    results: list[FrameResult]
    ticket: Any
    captured: Mapping[int, Any] | None = None
    held: list[Frame] = field(default_factory=list)
    end: EndOfStream | None = None


class Scheduler:
    """Runs the batcher and completer threads over a backend and a pipeline."""

    def __init__(
        self,
        mux: Multiplexer,
        unit: ServingUnit,
        sink: ResultSink,
        source_stats: dict[str, SourceStats],
        *,
        max_batch: int,
        max_wait_s: float,
        slots: int,
        sink_many: BatchSink | None = None,
        keep_pixels: bool = True,
        analytics: AnalyticsStage | None = None,
        sink_events: EventSink | None = None,
        view: FrameTap | None = None,
        early_slot_release: bool = True,
    ):
        """``analytics``: trackers, zones and lines, run on each batch's results before they are handed
        over; their event and track messages go to ``sink_events``. When they run elsewhere (worker
        processes, ``analytics.runs_elsewhere``), a third thread, the **hand-over** thread, takes each
        batch's analytics back and hands it over, in completion order, while the completer goes on with
        the next batch; otherwise the completer hands over itself. ``early_slot_release`` (False only for
        the benchmarks' side-by-side row): a batch's slot is freed once its outputs are copied off it,
        not after its postprocessing."""
        self._mux = mux
        self._unit = unit
        self._backend = backend = unit.backend
        self._pipeline = unit.pipeline
        self._sink = sink
        # One hand-over per batch (the publisher's submit_many) instead of one queue operation per frame.
        self._sink_many = sink_many or (lambda results: [sink(result) for result in results])
        # False when nothing downstream reads pixels (no thumbnails): results then carry only the shape.
        self._keep_pixels = keep_pixels
        self._analytics = analytics
        self._sink_events = sink_events or (lambda messages: None)
        self._view = view  # the live view: pixels of the frames it wants, before they are dropped
        self._source_stats = source_stats
        self._max_batch = min(max_batch, backend.info.max_batch)
        self._max_wait_s = max_wait_s
        self._early_release = early_slot_release
        self.stats = PipelineStats()
        # SimpleQueues (C): no Python-level lock that a thread switched out by the GIL could hold while
        # the other side waits on it (queue.Queue's mutex is taken in Python code).
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for index in range(slots):
            self._free.put(backend.create_slot(index))
        self._slot_count = slots
        self._inflight: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._abort = threading.Event()  # hard stop: give up on queued frames
        self._closing = threading.Event()  # no source will be added any more: end once all are drained
        self._pending_unit: ServingUnit | None = None
        self._pending_lock = threading.Lock()  # replace_unit (any thread) and the batcher's swap
        self._configured_max_batch = max_batch
        self.on_backend_switched: Callable[[InferenceBackend], None] | None = None
        self._batcher = threading.Thread(target=self._batch_loop, name="batcher", daemon=True)
        self._completer = threading.Thread(target=self._complete_loop, name="completer", daemon=True)
        self._handovers: queue.Queue[_Handover | None] | None = None
        self._handover: threading.Thread | None = None
        if analytics is not None and analytics.runs_elsewhere:
            # bounded: when the workers fall behind, the completer waits, slots stay busy, and the sources'
            # queues drop at the door (never a result after inference)
            self._handovers = queue.Queue(maxsize=slots)
            self._handover = threading.Thread(target=self._handover_loop, name="handover", daemon=True)

    @property
    def slot_count(self) -> int:
        """Batches that can be in flight at once (streams x 2)."""
        return self._slot_count

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def backend(self) -> InferenceBackend:
        return self._backend

    @property
    def unit(self) -> ServingUnit:
        return self._unit

    def replace_unit(self, unit: ServingUnit) -> None:
        """Switch to ``unit`` (backend, its pipeline and model) between two batches, from any thread.
        Frames keep queueing meanwhile; none is dropped by the switch itself. A new engine of the same
        model must take the same inputs and give the same outputs as the serving one."""
        if unit.model_info.get("sha256") == self._unit.model_info.get("sha256"):
            _check_compatible(self._backend, unit.backend)
        with self._pending_lock:
            superseded, self._pending_unit = self._pending_unit, unit
        if superseded is not None:  # never served: nobody else would close it
            log.info("a newer %s engine replaces the %s one still waiting to be switched to", unit.backend.info.name, superseded.backend.info.name)
            superseded.backend.close()
        self._mux.wake()

    def _switch_unit(self) -> None:
        """Take back every slot (in-flight batches of the old backend finish first), then swap."""
        with self._pending_lock:
            unit, self._pending_unit = self._pending_unit, None
        if unit is None:
            return
        new = unit.backend
        old_slots = []
        while len(old_slots) < self._slot_count:
            slot = self._acquire_slot()
            if slot is None:  # aborting
                new.close()
                for slot in old_slots:
                    self._free.put(slot)
                return
            old_slots.append(slot)
        old = self._backend
        self._unit, self._backend, self._pipeline = unit, new, unit.pipeline
        self._max_batch = min(self._configured_max_batch, new.info.max_batch)
        for index in range(self._slot_count):
            self._free.put(new.create_slot(index))
        old.close()
        log.info("switched inference from %s to %s %s", old.info.name, new.info.name, new.info.details.get("artifact") or "")
        if self.on_backend_switched is not None:
            self.on_backend_switched(new)

    def warm_up(self) -> float:
        """Run one full batch of zeros so the first real frame is not slow; returns seconds taken."""
        return warm_up(self._backend, self._max_batch)

    def start(self) -> None:
        self._batcher.start()
        self._completer.start()
        if self._handover is not None:
            self._handover.start()

    def close_when_drained(self) -> None:
        """No more sources will be added: finish once every queue is closed and drained."""
        self._closing.set()
        self._mux.wake()

    def abort(self) -> None:
        """Stop without draining (after the drain timeout)."""
        self._abort.set()
        self._mux.wake()

    def join(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = [t for t in (self._batcher, self._completer, self._handover) if t is not None]
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    # -- batcher -------------------------------------------------------------------------------------
    def _batch_loop(self) -> None:
        name_this_thread()
        try:
            while not self._abort.is_set():
                if self._pending_unit is not None:
                    self._switch_unit()
                t0 = time.perf_counter()
                slot = self._acquire_slot()  # first the slot, then the frames (late batching)
                if slot is None:
                    break
                t1 = time.perf_counter()
                self.stats.busy_slots = self._slot_count - self._free.qsize()
                gathered = self._mux.next_batch(self._max_batch, self._max_wait_s, self._abort)
                self.stats.queued_frames = self._mux.queued()
                seconds = self.stats.batcher
                seconds.waiting_for_slot += t1 - t0
                seconds.gathering += time.perf_counter() - t1
                if gathered.frames:
                    self._submit(slot, gathered.frames, gathered.ends)
                    continue
                self._free.put(slot)
                if gathered.ends:
                    self._inflight.put(_InFlight(self._backend, None, [], ends=gathered.ends))
                elif self._closing.is_set() and self._mux.all_finished():
                    break
        except Exception:
            log.exception("batcher crashed")
        finally:
            self._inflight.put(None)

    def _acquire_slot(self) -> Slot | None:
        while not self._abort.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _submit(self, slot: Slot, frames: list[Frame], ends: list[EndOfStream]) -> None:
        backend, pipeline = self._backend, self._pipeline
        kept: list[Frame] = []
        metas = []
        errors: list[tuple[str, str]] = []
        skipped: list[tuple[int, Frame]] = []
        analytics = self._analytics
        t0 = time.perf_counter()
        for frame in frames:
            if analytics is not None and not analytics.should_infer(frame.source_id, frame.index):
                skipped.append((len(kept), frame))
                continue
            try:
                metas.append(backend.stage(slot, len(kept), frame.image, pipeline))
                kept.append(frame)
            except Exception as exc:  # one bad frame must not sink the batch
                release_image(frame)
                errors.append((frame.source_id, f"preprocessing failed: {exc}"))
        item = _InFlight(backend, slot, kept, metas, ends, time.time(), errors, skipped, pipeline)
        t1 = time.perf_counter()
        if not kept:
            self._free.put(slot)
            item.slot = None
        else:
            try:
                backend.submit(slot, len(kept))
            except Exception as exc:
                log.error("inference submit failed: %s", exc)
                for frame in kept:
                    release_image(frame)
                    errors.append((frame.source_id, f"inference failed: {exc}"))
                self._free.put(slot)
                item.slot, item.frames = None, []
        self._inflight.put(item)
        seconds = self.stats.batcher
        seconds.staging += t1 - t0
        seconds.submitting += time.perf_counter() - t1

    # -- completer -----------------------------------------------------------------------------------
    def _complete_loop(self) -> None:
        name_this_thread()
        try:
            while True:
                item = self._inflight.get()
                if item is None:
                    break
                for source_id, message in item.errors:
                    self._count_error(source_id, message)
                if item.slot is not None:
                    self._complete(item)
                elif item.skipped:
                    self._dispatch(self._merge(item, [], time.time(), "", None), [])
                for end in item.ends:
                    self._end(end)
        except Exception:
            log.exception("completer crashed")
        finally:
            if self._handovers is not None:
                self._handovers.put(None)

    def _complete(self, item: _InFlight) -> None:
        slot = item.slot
        seconds = self.stats.completer
        t0 = time.perf_counter()
        held = False  # whether the hand-over thread took the frames (it releases them then)
        try:
            try:
                outputs = item.backend.wait(slot)
                if self._early_release:
                    outputs = self._release_early(item, outputs)
            except BackendError as exc:
                log.error("inference failed for a batch of %d: %s", len(item.frames), exc)
                self.stats.inference_errors += 1
                for frame in item.frames:
                    self._count_error(frame.source_id, f"inference failed: {exc}")
                return
            t_inferred = time.time()
            t1 = time.perf_counter()
            seconds.waiting_for_device += t1 - t0
            info = item.backend.info
            artifact = info.details.get("artifact")
            self.stats.batches += 1
            self.stats.frames += len(item.frames)
            decoded = info.decodes_on_device
            try:
                results = item.pipeline.postprocess_batch(outputs, item.metas, decoded)
            except Exception:  # find the frame(s) at fault: one bad row must not sink the batch
                results = []
                for row, (frame, meta) in enumerate(zip(item.frames, item.metas)):
                    try:
                        results.append(item.pipeline.postprocess(outputs, row, meta, decoded))
                    except Exception as exc:
                        results.append(None)
                        self._count_error(frame.source_id, f"postprocessing failed: {exc}")
            inferred = []
            for frame, result in zip(item.frames, results):
                if result is None:
                    inferred.append(None)
                    continue
                stats = self._source_stats.get(frame.source_id)
                if stats is not None:
                    stats.frames_inferred += 1
                inferred.append(FrameResult(frame, result, item.t_preprocessed, t_inferred, len(item.frames), info.name, artifact))
            ready = self._merge(item, inferred, t_inferred, info.name, artifact)
            t2 = time.perf_counter()
            seconds.postprocessing += t2 - t1
            held = self._dispatch(ready, item.frames)
            seconds.handing_over += time.perf_counter() - t2
        finally:
            if not held:
                for frame in item.frames:  # the batch has completed: device images can be reused
                    release_image(frame)
            if item.slot is not None:
                self._free.put(slot)
                item.slot = None
            self.stats.busy_slots = self._slot_count - self._free.qsize()

    def _release_early(self, item: _InFlight, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Give the slot back as soon as the batch's outputs are the completer's own, so the batcher can
        refill its stream while this batch is postprocessed (the GPU would otherwise idle behind the
        host's postprocessing; one completer serves every stream). Outputs that are views of the slot's
        buffers are copied when that is cheap (device-decoded candidates: ~3 KB a frame); large raw
        outputs keep the slot until postprocessing is done instead."""
        if not item.backend.info.owns_outputs:
            if sum(array.nbytes for array in outputs.values()) > _EARLY_RELEASE_COPY_BYTES:
                return outputs
            outputs = {name: array.copy() for name, array in outputs.items()}
        self._free.put(item.slot)
        item.slot = None
        return outputs

    def _merge(self, item: _InFlight, inferred: list[FrameResult | None], t_inferred: float, backend: str,
               artifact: str | None) -> list[FrameResult]:
        """The batch's results in the order its frames were taken, skipped frames in their places."""
        if not item.skipped:
            return [result for result in inferred if result is not None]
        merged: list[FrameResult] = []
        position = 0
        for before, frame in item.skipped:
            merged.extend(result for result in inferred[position:before] if result is not None)
            position = before
            if not self._keep_pixels:
                drop_pixels(frame)
            else:
                release_image(frame)
            merged.append(FrameResult(frame, {"detections": []}, item.t_preprocessed, t_inferred, 0, backend, artifact, inferred=False))
        merged.extend(result for result in inferred[position:] if result is not None)
        return merged

    def _dispatch(self, ready: list[FrameResult], frames: list[Frame]) -> bool:
        """Hand the batch over here, or start its analytics elsewhere and queue it for the hand-over
        thread. True when that thread holds the frames now (their pixels are needed there)."""
        if self._handovers is None:
            self._hand_over(ready, frames)
            return False
        try:
            ticket = self._analytics.submit(ready)
        except Exception:  # analytics must never cost the results themselves
            log.exception("analytics failed on a batch of %d results; publishing them untracked", len(ready))
            ticket = []
        captured = self._view.capture(frames) if self._view is not None else None
        held = bool(frames) and self._analytics.needs_pixels
        if not held and not self._keep_pixels:
            for frame in frames:
                drop_pixels(frame)
        self._handovers.put(_Handover(ready, ticket, captured, frames if held else []))
        return held

    def _end(self, end: EndOfStream) -> None:
        """A source ended: its tracks end (their messages) before its end-of-stream, after its results."""
        analytics = self._analytics
        if self._handovers is not None:
            self._handovers.put(_Handover([], analytics.submit_end(end), end=end))
            return
        if analytics is not None:
            self._events(analytics.collect_end(analytics.submit_end(end)))
        self._sink(end)

    def _handover_loop(self) -> None:
        """The hand-over thread (analytics elsewhere): each batch's analytics back, in order, then on."""
        name_this_thread()
        while True:
            item = self._handovers.get()
            if item is None:
                break
            try:
                self._hand_over_later(item)
            except Exception:  # one batch's failure must not stop the ones after it (the completer waits on them)
                log.exception("handing over a batch failed")

    def _hand_over_later(self, item: _Handover) -> None:
        """One item of the hand-over thread: what :meth:`_hand_over` does, with the analytics' answer
        collected now (the frames' pixels went already, unless [snapshots] held them for this)."""
        analytics = self._analytics
        if item.end is not None:
            try:
                messages = analytics.collect_end(item.ticket)
            except Exception:
                log.exception("analytics failed at the end of %s", item.end.source_id)
                messages = []
            if messages:
                self._events(messages)
            self._sink(item.end)
            return
        try:
            try:
                messages = analytics.collect(item.ticket, item.results)
            except Exception:  # analytics must never cost the results themselves
                log.exception("analytics failed on a batch of %d results; publishing them untracked", len(item.results))
                messages = []
        finally:
            for frame in item.held:
                if self._keep_pixels:
                    release_image(frame)
                else:
                    drop_pixels(frame)
        self._sink_many(item.results)
        if messages:
            self._events(messages)
        if item.captured:
            self._view.offer(item.results, item.captured)

    def _hand_over(self, ready: list[FrameResult], frames: list[Frame]) -> None:
        """Analytics (in frame order, on this thread; with the pixels still there, for event snapshots),
        the live view's pick of the frames, then the pixels go (unless thumbnails need them) and the
        publisher gets the results first, then the events they caused; the view draws last, with the
        track ids the analytics added."""
        messages: list[AnalyticsMessage] = []
        if self._analytics is not None:
            try:
                messages = self._analytics.collect(self._analytics.submit(ready), ready)
            except Exception:  # analytics must never cost the results themselves
                log.exception("analytics failed on a batch of %d results; publishing them untracked", len(ready))
        captured = self._view.capture(frames) if self._view is not None else None
        if not self._keep_pixels:  # the batch is done with the pixels; the publisher needs only shapes
            for frame in frames:
                drop_pixels(frame)
        self._sink_many(ready)
        if messages:
            self._events(messages)
        if captured:
            self._view.offer(ready, captured)

    def _events(self, messages: list[AnalyticsMessage]) -> None:
        try:
            self._sink_events(messages)
        except Exception:  # a failing event sink must not stop results
            log.exception("handing over analytics events failed")

    def _count_error(self, source_id: str, message: str) -> None:
        """Count a frame's failure (completer thread only: see ``_InFlight.errors``)."""
        stats = self._source_stats.get(source_id)
        if stats is not None:
            stats.inference_errors += 1
            stats.last_error = message


def warm_up(backend: InferenceBackend, batch: int) -> float:
    """One full batch through a slot of its own (lazy initialisation happens here, not on a frame)."""
    slot = backend.create_slot(-1)
    start = time.monotonic()
    backend.submit(slot, min(batch, backend.info.max_batch))
    backend.wait(slot, timeout=300)
    return time.monotonic() - start


def _check_compatible(old: InferenceBackend, new: InferenceBackend) -> None:
    """A replacement must take the same inputs and produce the same outputs (names and per-item shapes)."""

    def shapes(specs):
        return {spec.name: tuple(spec.shape[1:]) for spec in specs}

    if shapes(old.info.inputs) != shapes(new.info.inputs) or set(shapes(old.info.outputs)) != set(shapes(new.info.outputs)):
        raise BackendError(
            f"the new {new.info.name} engine does not match the serving one: inputs {shapes(new.info.inputs)} "
            f"vs {shapes(old.info.inputs)}, outputs {sorted(shapes(new.info.outputs))} vs {sorted(shapes(old.info.outputs))}"
        )
