"""The scheduler's batching against a real ONNX Runtime backend: late batching (a slot first, then the
frames), and one staging call whatever the backend was configured for."""

from __future__ import annotations

import dataclasses
import threading
import time

import cv2
import numpy as np
import pytest

from daemon.config import DropPolicy
from daemon.entities import Frame
from daemon.framequeue import Multiplexer
from daemon.scheduler import Scheduler
from daemon.serving import ServingUnit
from daemon.stats import SourceStats

from .conftest import asset
from .test_pipelines import real_pipeline


class HeldBackend:
    """A real backend whose batches complete only when the test says so (a test instrument around
    ONNX Runtime, not a stand-in for it): ``wait`` blocks until :meth:`release`."""

    def __init__(self, backend):
        self._backend = backend
        self.info = backend.info
        self.submitted: list[int] = []
        self.submitted_event = threading.Event()
        self._released = threading.Semaphore(0)

    def configure(self, work):
        return self._backend.configure(work)

    def create_slot(self, index):
        return self._backend.create_slot(index)

    def stage(self, slot, row, image, pipeline):
        return self._backend.stage(slot, row, image, pipeline)

    def submit(self, slot, batch_size):
        self._backend.submit(slot, batch_size)
        self.submitted.append(batch_size)
        self.submitted_event.set()

    def wait(self, slot, timeout=None):
        assert self._released.acquire(timeout=60), "the test never released the batch"
        return self._backend.wait(slot, timeout)

    def release(self) -> None:
        self._released.release()

    def close(self):
        self._backend.close()


class SlotBufferBackend(HeldBackend):
    """HeldBackend whose outputs are views of per-slot buffers that the slot's next submit overwrites,
    as the GPU runtime's pinned outputs are (``owns_outputs`` False): a test instrument around ONNX
    Runtime for the copy the scheduler makes before it frees a slot early."""

    def __init__(self, backend):
        super().__init__(backend)
        self.info = dataclasses.replace(backend.info, owns_outputs=False)
        self._buffers: dict[int, dict[str, np.ndarray]] = {}

    def submit(self, slot, batch_size):
        for array in self._buffers.get(slot.index, {}).values():
            array.fill(np.nan)  # the next batch's outputs land where the last one's were
        super().submit(slot, batch_size)

    def wait(self, slot, timeout=None):
        outputs = super().wait(slot, timeout)
        kept = self._buffers.setdefault(slot.index, {})
        for name, array in outputs.items():
            if name not in kept or kept[name].shape != array.shape:
                kept[name] = np.empty_like(array)
            np.copyto(kept[name], array)
        return dict(kept)


class GatedPostprocessing:
    """The real pipeline, whose batch postprocessing first waits (with a deadline) until ``ready`` is
    set: holds the completer inside postprocessing while the test looks at what the batcher does."""

    def __init__(self, pipeline, ready: threading.Event):
        self._pipeline, self._ready = pipeline, ready
        self.saw_ready: list[bool] = []

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def postprocess_batch(self, outputs, metas, decoded=False):
        self.saw_ready.append(self._ready.wait(10))
        return self._pipeline.postprocess_batch(outputs, metas, decoded)


def _bikes_frame(index: int = 0) -> np.ndarray:
    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, image = capture.read()
    assert ok
    return image


def test_frames_wait_in_their_queue_not_in_a_formed_batch_while_every_slot_is_busy():
    """With the only slot in flight, frames arriving at a drop-oldest camera queue stay there, so the
    queue drops its oldest and the next batch is the newest frames. (Gathering before acquiring a slot
    would have taken frame 1 into a batch that then waited for the slot, out of drop-oldest's reach.)"""
    real, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    backend = HeldBackend(real)
    mux = Multiplexer()
    queue = mux.add_queue("cam", 2, DropPolicy.DROP_OLDEST)
    published: list[int] = []
    three = threading.Event()

    def sink(item):
        if hasattr(item, "frame"):
            published.append(item.frame.index)
            if len(published) == 3:
                three.set()

    scheduler = Scheduler(mux, ServingUnit(backend, pipeline, {}), sink, {"cam": SourceStats("cam", "x", "live")}, max_batch=2, max_wait_s=0.0, slots=1)
    scheduler.start()
    image = _bikes_frame()
    queue.put(Frame("cam", 0, None, image.copy(), 0.0, 0.0))
    assert backend.submitted_event.wait(30), "frame 0 was never submitted"
    for index in range(1, 5):  # the only slot is in flight: these must stay queued (capacity 2)
        queue.put(Frame("cam", index, None, image.copy(), 0.0, 0.0))
    assert queue.dropped == 2 and mux.queued() == 2, (queue.dropped, mux.queued())
    backend.release()
    backend.release()
    assert three.wait(60), published
    assert published == [0, 3, 4]
    assert backend.submitted == [1, 2]
    queue.close("end_of_file")
    scheduler.close_when_drained()
    assert scheduler.join(30)
    backend.close()


def test_a_frame_the_backend_cannot_stage_is_counted_and_the_rest_of_the_batch_served():
    """One staging call per frame: a frame the backend refuses (a device frame on the CPU backend) is
    reported on its source; the other frames of the batch are served."""
    from daemon.entities import DeviceFrame

    class FakeDeviceFrame(DeviceFrame):  # a TEST DOUBLE of an NVDEC frame: no device here
        width, height, pitch, shape = 64, 64, 64, (64, 64, 3)
        y_ptr = uv_ptr = 0
        released = False

        def release(self) -> None:
            self.released = True

    backend, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    mux = Multiplexer()
    queue = mux.add_queue("cam", 4, DropPolicy.BLOCK)
    stats = {"cam": SourceStats("cam", "x", "file")}
    got, done = [], threading.Event()

    def sink(item):
        got.append(item)
        if not hasattr(item, "frame"):
            done.set()

    scheduler = Scheduler(mux, ServingUnit(backend, pipeline, {}), sink, stats, max_batch=4, max_wait_s=0.05, slots=2)
    scheduler.start()
    device_frame = FakeDeviceFrame()
    queue.put(Frame("cam", 0, None, _bikes_frame(), 0.0, 0.0))
    queue.put(Frame("cam", 1, None, device_frame, 0.0, 0.0))
    queue.close("end_of_file")
    assert done.wait(60)
    scheduler.close_when_drained()
    assert scheduler.join(30)
    assert [item.frame.index for item in got if hasattr(item, "frame")] == [0]
    assert stats["cam"].inference_errors == 1 and "device memory" in stats["cam"].last_error
    assert device_frame.released, "a refused pooled frame goes back to its pool"
    backend.close()


def test_a_unit_superseded_before_the_switch_is_closed_and_the_newest_serves():
    """Two engines delivered while the batcher is busy: the first never serves, so it is closed (its
    memory would otherwise leak); the scheduler switches to the second."""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.config import OnnxRuntimeConfig

    real, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    held = HeldBackend(real)
    mux = Multiplexer()
    queue = mux.add_queue("cam", 4, DropPolicy.BLOCK)
    published, switched = [], threading.Event()
    scheduler = Scheduler(mux, ServingUnit(held, pipeline, {"sha256": "a"}), lambda item: published.append(item), {"cam": SourceStats("cam", "x", "file")},
                          max_batch=1, max_wait_s=0.0, slots=1)
    scheduler.on_backend_switched = lambda backend: switched.set()
    scheduler.start()
    queue.put(Frame("cam", 0, None, _bikes_frame(), 0.0, 0.0))
    assert held.submitted_event.wait(30)  # the batcher holds the only slot until the batch is released
    model = asset("models/yolov3_tiny_416.onnx")
    first, second = (OnnxRuntimeBackend(model, 1, 1, OnnxRuntimeConfig()) for _ in range(2))
    closed = []
    first_close = first.close
    first.close = lambda: (closed.append("first"), first_close())[1]
    scheduler.replace_unit(ServingUnit(first, pipeline, {"sha256": "b"}))
    scheduler.replace_unit(ServingUnit(second, pipeline, {"sha256": "c"}))
    assert closed == ["first"]
    held.release()
    assert switched.wait(30)
    assert scheduler.backend is second
    queue.close("end_of_file")
    scheduler.close_when_drained()
    assert scheduler.join(30)
    second.close()


def test_the_scheduler_accounts_where_its_threads_wait():
    """A batch held on the "device" for a known time shows up where it was spent: the completer waiting
    for the device, the batcher waiting for the only slot; and no phase adds up to more than the wall
    time that passed (the figures the GPU benchmark reads to say what limits a pipeline)."""
    real, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    backend = HeldBackend(real)
    mux = Multiplexer()
    queue = mux.add_queue("cam", 4, DropPolicy.BLOCK)
    published = threading.Semaphore(0)

    def sink(item):
        if hasattr(item, "frame"):
            published.release()

    scheduler = Scheduler(mux, ServingUnit(backend, pipeline, {}), sink, {"cam": SourceStats("cam", "x", "file")}, max_batch=1, max_wait_s=0.0, slots=1)
    started = time.perf_counter()
    scheduler.start()
    image = _bikes_frame()
    queue.put(Frame("cam", 0, None, image.copy(), 0.0, 0.0))
    assert backend.submitted_event.wait(30), "frame 0 was never submitted"
    queue.put(Frame("cam", 1, None, image.copy(), 0.0, 0.0))  # the batcher now waits for the only slot
    held = 0.4
    threading.Event().wait(held)  # the time being measured: the "device" holds batch 0 this long
    backend.release()
    backend.release()
    assert published.acquire(timeout=60) and published.acquire(timeout=60)
    queue.close("end_of_file")
    scheduler.close_when_drained()
    assert scheduler.join(30)
    wall = time.perf_counter() - started  # the threads account their time until they end, not until the last result
    backend.close()
    batcher, completer = scheduler.stats.batcher, scheduler.stats.completer
    assert completer.waiting_for_device >= held * 0.9, completer
    assert batcher.waiting_for_slot >= held * 0.9, batcher
    assert batcher.staging > 0 and batcher.submitting > 0 and completer.postprocessing > 0, (batcher, completer)
    assert sum(vars(batcher).values()) <= wall and sum(vars(completer).values()) <= wall, (batcher, completer, wall)
    snapshot = scheduler.stats.snapshot()["seconds"]
    assert snapshot["completer"]["waiting_for_device"] >= held * 0.9


def _two_results(field):
    """A sink keeping ``field(result)`` per frame index, and the event it sets at the second result."""
    kept: dict[int, object] = {}
    both = threading.Event()

    def sink(item):
        if hasattr(item, "frame"):
            kept[item.frame.index] = field(item)
            if len(kept) == 2:
                both.set()

    return sink, kept, both


def _one_slot(unit, sink):
    """A scheduler with one slot and batches of one over a blocking queue "cam"."""
    mux = Multiplexer()
    queue = mux.add_queue("cam", 4, DropPolicy.BLOCK)
    return Scheduler(mux, unit, sink, {"cam": SourceStats("cam", "x", "file")}, max_batch=1, max_wait_s=0.0, slots=1), queue


@pytest.mark.parametrize("wrapper", [HeldBackend, SlotBufferBackend], ids=["outputs-owned", "outputs-in-slot-buffers"])
def test_a_slot_takes_the_next_batch_while_its_last_batch_is_postprocessed(wrapper):
    """One slot: batch 1 is submitted on it while batch 0 is still being postprocessed (the completer
    frees the slot once the outputs are its own), so the device is not idle behind the host's
    postprocessing. Outputs in the slot's buffers are copied first: batch 0's detections are intact
    although batch 1 overwrote those buffers, and equal batch 1's (the same image)."""
    real, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    backend = wrapper(real)
    second_submitted = threading.Event()
    submit = backend.submit

    def counting_submit(slot, batch_size):
        submit(slot, batch_size)
        if len(backend.submitted) == 2:
            second_submitted.set()

    backend.submit = counting_submit
    gated = GatedPostprocessing(pipeline, second_submitted)
    sink, published, both = _two_results(lambda result: result.results["detections"])
    scheduler, queue = _one_slot(ServingUnit(backend, gated, {}), sink)
    scheduler.start()
    image = _bikes_frame(120)  # cyclists in view
    queue.put(Frame("cam", 0, None, image.copy(), 0.0, 0.0))
    assert backend.submitted_event.wait(30), "frame 0 was never submitted"
    queue.put(Frame("cam", 1, None, image.copy(), 0.0, 0.0))
    backend.release()
    backend.release()
    assert both.wait(60), published
    queue.close("end_of_file")
    scheduler.close_when_drained()
    assert scheduler.join(30)
    backend.close()
    assert gated.saw_ready[0], "batch 1 was not submitted while batch 0 was postprocessed: the slot was held"
    assert published[0] and published[0] == published[1], published


class TaggingPipeline(GatedPostprocessing):
    """GatedPostprocessing that marks each result with ``tag``: which pipeline postprocessed it."""

    def __init__(self, pipeline, ready: threading.Event, tag: str):
        super().__init__(pipeline, ready)
        self.tag = tag

    def postprocess_batch(self, outputs, metas, decoded=False):
        return [{**result, "tag": self.tag} for result in super().postprocess_batch(outputs, metas, decoded)]


def test_a_batch_postprocessed_across_a_unit_switch_keeps_the_pipeline_that_staged_it():
    """The slot is free while batch 0 is postprocessed, so a new unit can be switched in meanwhile: batch
    0's results are the pipeline's that staged it (the new one may read another model's outputs), the
    next batch's the new one's. (The switch lands while batch 0 is inside its postprocessing; the
    narrower moment between freeing the slot and calling the pipeline is not forced here: the batch
    carries its pipeline, so no moment differs.)"""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.config import OnnxRuntimeConfig

    real, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    held = HeldBackend(real)
    switched = threading.Event()
    always = threading.Event()
    always.set()
    old = TaggingPipeline(pipeline, switched, "old")  # batch 0's postprocessing waits for the switch
    sink, tags, both = _two_results(lambda result: result.results["tag"])
    scheduler, queue = _one_slot(ServingUnit(held, old, {}), sink)
    scheduler.on_backend_switched = lambda backend: switched.set()
    scheduler.start()
    image = _bikes_frame(120)
    queue.put(Frame("cam", 0, None, image.copy(), 0.0, 0.0))
    assert held.submitted_event.wait(30), "frame 0 was never submitted"
    held.release()  # batch 0 completes on the device; its postprocessing waits for the switch
    new_backend = OnnxRuntimeBackend(asset("models/yolov3_tiny_416.onnx"), 1, 1, OnnxRuntimeConfig())
    scheduler.replace_unit(ServingUnit(new_backend, TaggingPipeline(pipeline, always, "new"), {}))
    assert switched.wait(30), "the switch never happened while batch 0 was postprocessed"
    queue.put(Frame("cam", 1, None, image.copy(), 0.0, 0.0))
    assert both.wait(60), tags
    queue.close("end_of_file")
    scheduler.close_when_drained()
    assert scheduler.join(30)
    new_backend.close()
    assert old.saw_ready == [True], old.saw_ready
    assert tags == {0: "old", 1: "new"}, tags
