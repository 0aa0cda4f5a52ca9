"""Host-path benchmark, no GPU needed (``python -m daemon.bench.host``): how many results per second the
daemon's Python threads sustain, and the CPU time each thread spends per result.

On a GPU whose engine outruns the host (YOLOv3-tiny on an H200: 14764 img/s engine-only, the pipeline
0.67 × that), the limit is the host work per frame, spread over three threads that share the GIL: the
**batcher** (``Multiplexer.next_batch``, one ``stage`` per frame, ``submit``), the **completer**
(``wait``, one ``postprocess_batch`` per batch, the FrameResults, ``submit_many``) and the
**publisher** (a JSON header and a ZeroMQ send per result). This runs exactly that code — the real
:class:`~daemon.scheduler.Scheduler`, :class:`~daemon.publisher.Publisher` on an ipc socket drained by
a subscriber in another process, and the real detection pipeline built by the serving-unit factory —
with the GPU replaced by :class:`GpuStandIn`.

:class:`GpuStandIn` is a *benchmark stand-in for the GPU*, not a test double: it computes nothing and
runs no inference. It declares what the GPU runtime declares (GPU preprocessing, device decoding), its
``stage`` does the runtime's own host work (:func:`daemon.gpu.runtime.stage_frame`: the job-table row
and the pinned-copy bookkeeping of a frame decoded into a pooled buffer), and its ``wait`` returns, at
once, device-decoded rows ``[N, 128, 6]`` computed beforehand from real YOLOv3-tiny outputs on
``bikes.mp4`` (ONNX Runtime, then the device decoding's contract in numpy). Sources hand out frames
already sitting in pooled buffers (the decode itself is the readers' cost, not the host path's).

Not modelled: the CUDA calls of the real ``submit`` (a few per batch, not per frame) and the time the
GPU takes (``wait`` never blocks), so results/s here is the host path's ceiling on this machine.

Usage: python -m daemon.bench.host [--batch 32] [--sources 4] [--seconds 4] [--rounds 3] [--profile DIR]
       [--compare-tracking [--analytics-processes N]] [--compare-gc-freeze [--import-torch]] [--compare-sends] [--contenders N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from daemon.backends.base import BackendInfo, Capabilities, DeviceWork, Slot, TensorSpec
from daemon.bench.resources import thread_clocks
from daemon.bufferpool import BufferPool
from daemon.config import DetectionConfig, DropPolicy, EngineConfig, ModelConfig, PublisherConfig
from daemon.entities import Frame
from daemon.framequeue import Multiplexer
from daemon.gcpolicy import GcPauses, freeze_heap
from daemon.gil import apply_switch_interval
from daemon.gpu.runtime import _align, _SlotState, stage_frame
from daemon.pinned import PinnedImage
from daemon.publisher import Publisher
from daemon.scheduler import Scheduler
from daemon.serving import build_unit
from daemon.stats import SourceStats

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "assets" / "models" / "yolov3_tiny_416.onnx"
VIDEO = REPO / "assets" / "media" / "bikes.mp4"
LABELS = REPO / "assets" / "labels" / "coco.txt"
CANDIDATES = 128
FRAMES = 250  # as many bikes.mp4 frames as the GPU benchmark decodes (their detections, 0 to 5 a frame)
THREADS = ("batcher", "completer", "handover", "publisher")


# -- canned device output -------------------------------------------------------------------------------
def decode_frames(count: int) -> list[np.ndarray]:
    """The GPU benchmark's frames (bikes.mp4 at its own size), so both benchmarks see the same input."""
    from daemon.bench.gpu import decode

    return decode("native", count)


def device_decode_numpy(output: np.ndarray, candidates: int = CANDIDATES) -> np.ndarray:
    """:meth:`pipelines.detection.DetectionPipeline.device_decode`'s contract (objectness layout) in numpy:
    each image's ``candidates`` best boxes as rows ``x1, y1, x2, y2, score, class``, best first."""
    class_scores = output[..., 5:] * output[..., 4:5]
    classes = class_scores.argmax(-1)
    scores = np.take_along_axis(class_scores, classes[..., None], -1)[..., 0]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :candidates]
    cxcywh = np.take_along_axis(output[..., :4], top[..., None], 1)
    half = cxcywh[..., 2:] / 2
    chosen = np.take_along_axis(classes, top, 1).astype(np.float32)
    best = np.take_along_axis(scores, top, 1)
    return np.concatenate([cxcywh[..., :2] - half, cxcywh[..., :2] + half, best[..., None], chosen[..., None]], -1).astype(np.float32)


def canned_rows(frames: list[np.ndarray], pipeline: Any) -> np.ndarray:
    """Device-decoded rows of ``frames`` from the real model: ONNX Runtime on the CPU, once."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    width, height = pipeline.input_size
    rows = []
    for start in range(0, len(frames), 8):
        chunk = frames[start : start + 8]
        batch = np.zeros((len(chunk), 3, height, width), np.float32)
        for row, image in enumerate(chunk):
            pipeline.preprocess(image, batch[row])
        (output,) = session.run(None, {session.get_inputs()[0].name: batch})
        rows.append(device_decode_numpy(output))
    return np.concatenate(rows)


# -- the GPU stand-in ---------------------------------------------------------------------------------------
class _HostAddress:
    """Where the stand-in's "device" staging area lives (the job table needs an address)."""

    def __init__(self, array: np.ndarray):
        self.ptr = array.ctypes.data


class GpuStandIn:
    """A BENCHMARK STAND-IN FOR THE GPU (an :class:`~daemon.backends.base.InferenceBackend` that runs no
    inference): declares GPU preprocessing and device decoding as :class:`daemon.gpu.runtime.DeviceRuntime`
    does, stages frames with the runtime's own host code, and returns canned device-decoded rows."""

    def __init__(self, rows: np.ndarray, max_batch: int, input_size: tuple[int, int]):
        width, height = input_size
        self._rows = np.concatenate([rows, rows])  # any window of up to len(rows) rows without wrapping
        self._count = len(rows)
        self._next = 0
        self._job = None
        self._frame_bytes = 0
        self._table_bytes = 0
        self.info = BackendInfo(
            name="gpu-stand-in",
            version="0",
            device="none (benchmark stand-in)",
            inputs=(TensorSpec("images", np.dtype(np.float16), (-1, 3, height, width)),),
            outputs=(TensorSpec("output", np.dtype(np.float16), (-1, 2535, 85)),),
            max_batch=max_batch,
            details={"streams": 3, "artifact": None},
            capabilities=Capabilities(gpu_preprocessing=True, device_frames=True, device_decoding=True, cuda_graphs=True),
        )

    def configure(self, work: DeviceWork) -> DeviceWork:
        from daemon.gpu.preprocess import Job

        self._job = Job
        self._frame_bytes = int(work.preprocessing.max_frame_bytes)
        shape = (-1, work.decoding.candidates, 6)
        outputs = (TensorSpec(self.info.outputs[0].name, np.dtype(np.float32), shape),)
        self.info = replace(self.info, outputs=outputs, details={**self.info.details, "device_decoding": list(shape)}, work=work)
        return work

    def create_slot(self, index: int) -> Slot:
        batch = self.info.max_batch
        host_out = {self.info.outputs[0].name: np.zeros((batch, CANDIDATES, 6), np.float32)}
        state = _SlotState(0, None, None, {}, {}, {}, host_out)
        if index >= 0:
            from daemon.gpu.preprocess import Job

            self._table_bytes = _align(ctypes_sizeof(Job) * batch)
            state.staging_host = np.zeros(self._table_bytes + batch * _align(self._frame_bytes), np.uint8)
            state.staging_device = _HostAddress(state.staging_host)
            state.table = (Job * batch).from_address(state.staging_host.ctypes.data)
        return Slot(index=index, inputs={}, outputs=host_out, state=state)

    def stage(self, slot: Slot, row: int, image: Any, pipeline: Any) -> Any:
        return stage_frame(slot.state, row, image, pipeline, self._job, self._table_bytes, self._frame_bytes)

    def submit(self, slot: Slot, batch_size: int) -> None:
        """The "device-to-host copy" of the decoded rows (the next ``batch_size`` canned images)."""
        start = self._next
        self._next = (start + batch_size) % self._count
        np.copyto(slot.outputs[self.info.outputs[0].name][:batch_size], self._rows[start : start + batch_size])
        slot.state.pinned_copies.clear()
        slot.batch_size = batch_size

    def wait(self, slot: Slot, timeout: float | None = None) -> dict[str, np.ndarray]:
        n = slot.batch_size
        return {name: host[:n] for name, host in slot.outputs.items()}

    def close(self) -> None:
        pass


def ctypes_sizeof(kind: type) -> int:
    import ctypes

    return ctypes.sizeof(kind)


class HostImagePool(BufferPool[PinnedImage]):
    """A source's pool of :class:`~daemon.pinned.PinnedImage` frames over ordinary memory (no CUDA here),
    each filled once with a decoded frame: taking one is what a reader does before decoding into it."""

    def __init__(self, images: list[np.ndarray]):
        pooled = []
        for source in images:
            image = np.array(source).view(PinnedImage)
            image._pool, image._buffer = self, None
            pooled.append(image)
        super().__init__(pooled, lambda image: None)

    def take(self, stop: threading.Event | None = None) -> PinnedImage | None:
        image = super().take(stop)
        if image is not None:
            image._released = False
        return image


# -- the consumer ---------------------------------------------------------------------------------------------
def drain(endpoint: str, received: Any, stop: Any, ready: Any) -> None:
    """A subscriber in its own process: receives every message, as a consumer would, and counts results."""
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, 100000)
    socket.setsockopt(zmq.RCVTIMEO, 100)
    socket.setsockopt(zmq.SUBSCRIBE, b"trtstream/")
    socket.connect(endpoint)
    ready.set()
    count = 0
    heartbeat = b"trtstream/_heartbeat/"
    while not stop.is_set():
        try:
            parts = socket.recv_multipart()
        except zmq.Again:
            continue
        if parts[0] != heartbeat:
            count += 1
            if count % 256 == 0:
                received.value = count
    received.value = count
    socket.close(0)
    context.term()


# -- measurement ------------------------------------------------------------------------------------------------
def profiled(target: Callable[[], None], name: str, directory: Path) -> Callable[[], None]:
    """``target`` run under its own cProfile (a profiler sees one thread), stats written at its end."""

    def run() -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            target()
        finally:
            profile.disable()
            profile.dump_stats(str(directory / f"{name}.pstats"))

    return run


def contending(count: int) -> Callable[[], None]:
    """``count`` threads that release and retake the GIL without pause, as a hundred camera readers do in
    their native calls (a decode, a copy, a queue wait); returns the function that stops them."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            time.sleep(0)

    threads = [threading.Thread(target=loop, name=f"contender{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()

    def end() -> None:
        stop.set()
        for thread in threads:
            thread.join(5)

    return end


def run(batch: int, sources: int, seconds: float, rounds: int, profile_dir: Path | None,
        hold_gil_for_sends: bool = True, tracking: bool = False, analytics_processes: int = 0) -> list[dict[str, float]]:  # fmt: skip
    """``tracking``: every source tracked (ByteTrack at the default [tracking]), on the completer or, with
    ``analytics_processes``, in that many worker processes (daemon.analytics_processes), as the daemon does."""
    frames = decode_frames(FRAMES)
    model = ModelConfig(path=MODEL, pipeline="detection", labels=LABELS.read_text().split("\n")[:80], detection=DetectionConfig(pad_value=127))
    engine = EngineConfig(preprocess="gpu", max_batch=batch, max_frame_size=(frames[0].shape[1], frames[0].shape[0]))
    probe = build_unit(model, engine, GpuStandIn(np.zeros((1, CANDIDATES, 6), np.float32), batch, (416, 416)))
    rows = canned_rows(frames, probe.pipeline)
    backend = GpuStandIn(rows, batch, probe.pipeline.input_size)
    unit = build_unit(model, engine, backend)

    mux = Multiplexer()
    ids = [f"cam{i}" for i in range(sources)]
    queues = [mux.add_queue(source_id, batch * 2, DropPolicy.BLOCK) for source_id in ids]
    stats = {source_id: SourceStats(source_id, "memory", "synthetic") for source_id in ids}
    per_pool = batch * 2 + batch * 6 // sources + 8  # its queue, its share of 6 slots in flight, the publisher's hold
    pools = [HostImagePool([frames[(n * sources + i) % len(frames)] for n in range(per_pool)]) for i in range(sources)]
    run_dir = tempfile.mkdtemp(prefix="trtstream-host-bench-")
    endpoint = f"ipc://{run_dir}/bench.ipc"
    publisher = Publisher(
        PublisherConfig(endpoints=[endpoint], send_hwm=10000, queue_size=100000, wait_for_subscribers=1,
                        hold_gil_for_sends=hold_gil_for_sends), "0" * 32,
        unit.model_info, stats, lambda: {},
    )  # fmt: skip
    analytics = None
    if tracking:
        from daemon.analytics.stage import AnalyticsSettings
        from daemon.analytics.workers import make_analytics
        from daemon.analyticsconfig import TrackingConfig

        analytics = make_analytics(AnalyticsSettings(TrackingConfig(), {source_id: 1 for source_id in ids}, {}, {}, tuple(unit.pipeline.labels)),
                                   analytics_processes)
    scheduler = Scheduler(mux, unit, publisher.submit, stats, max_batch=batch, max_wait_s=0.002, slots=6, sink_many=publisher.submit_many,
                          analytics=analytics, sink_events=publisher.submit_events)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        for thread in (scheduler._batcher, scheduler._completer, scheduler._handover, publisher._thread):
            if thread is None:
                continue
            thread._target = profiled(thread._target, thread.name, profile_dir)

    context = multiprocessing.get_context("spawn")
    received, stop_consumer, ready = context.Value("q", 0), context.Event(), context.Event()
    consumer = context.Process(target=drain, args=(endpoint, received, stop_consumer, ready), daemon=True)
    publisher.start()
    consumer.start()
    ready.wait(30)
    publisher.wait_for_subscribers(1, 30)
    stop = threading.Event()

    def feed(index: int) -> None:
        queue, pool, n = queues[index], pools[index], 0
        while not stop.is_set():
            image = pool.take(stop)
            if image is None:
                break
            if not queue.put(Frame(ids[index], n, n * 40.0, image, time.time(), time.monotonic()), stop):
                image.release()
                break
            stats[ids[index]].frames_captured += 1
            n += 1
        queue.close("shutdown")

    feeders = [threading.Thread(target=feed, args=(i,), name=f"source-{i}", daemon=True) for i in range(sources)]
    scheduler.start()
    for thread in feeders:
        thread.start()
    time.sleep(1.0)  # settle
    clocks = thread_clocks(lambda name: name in THREADS)
    measured = []
    for _ in range(rounds):
        cpu0 = {name: time.clock_gettime(clock) for name, clock in clocks.items()}
        sent0, received0, t0 = publisher.stats.sent, received.value, time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - t0
        sent = publisher.stats.sent - sent0
        cpu = {name: time.clock_gettime(clock) - cpu0[name] for name, clock in clocks.items()}
        row = {"results_s": sent / elapsed, "received_s": (received.value - received0) / elapsed}
        row.update({f"{name}_us": cpu[name] / max(sent, 1) * 1e6 for name in THREADS if name in cpu})
        measured.append(row)
        print(format_row(row), flush=True)
    stop.set()
    scheduler.close_when_drained()
    scheduler.join(30)
    if analytics is not None:
        analytics.close()
    publisher.stop()
    stop_consumer.set()
    consumer.join(10)
    dropped = publisher.stats.dropped_socket + publisher.stats.dropped_queue_full
    if dropped:
        print(f"warning: the publisher dropped {dropped} results (socket or queue full)")
    return measured


def format_row(row: dict[str, float]) -> str:
    threads = "  ".join(f"{name} {row.get(f'{name}_us', float('nan')):6.1f}" for name in THREADS)
    total = sum(row.get(f"{name}_us", 0.0) for name in THREADS)
    return f"results/s {row['results_s']:8.0f}  (subscriber {row['received_s']:8.0f})  CPU µs/result: {threads}  total {total:6.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.bench.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="write one cProfile pstats file per thread here (slows it down)")
    parser.add_argument("--contenders", type=int, default=0,
                        help="threads that release and retake the GIL without pause beside the pipeline (camera readers' stand-ins)")
    parser.add_argument("--compare-tracking", action="store_true",
                        help="run it twice: untracked, then every source tracked (ByteTrack), in --analytics-processes workers")
    parser.add_argument("--analytics-processes", type=int, default=0, help="with --compare-tracking: worker processes (0: on the completer)")
    parser.add_argument("--compare-gc-freeze", action="store_true",
                        help="run it twice, tracked on the completer (many objects per result): Python's default garbage "
                        "collection, then with the heap frozen first (daemon.gc_freeze); prints each run's collections and pauses")
    parser.add_argument("--import-torch", action="store_true", help="import torch first (a GPU daemon's heap), where installed")
    parser.add_argument("--compare-sends", action="store_true",
                        help="run it twice: publisher sends holding the GIL (the default) and pyzmq's, which release it")
    args = parser.parse_args(argv)
    apply_switch_interval()  # the daemon's GIL switch interval (daemon/gil.py): its pipeline, measured as it runs
    print(f"host path, YOLOv3-tiny rows, batch {args.batch}, {args.sources} sources, {os.cpu_count()} CPUs; GPU: a benchmark stand-in"
          + (f"; {args.contenders} GIL-contending threads" if args.contenders else ""))  # fmt: skip
    end_contention = contending(args.contenders)
    try:
        medians = {}
        if args.import_torch:  # its objects are what a full collection walks on a GPU machine
            importlib.import_module("torch")
        if args.compare_gc_freeze:
            variants = [("Python's garbage collection", {"tracking": True}), ("heap frozen first (daemon.gc_freeze)", {"tracking": True, "freeze": True})]
        elif args.compare_tracking:
            variants = [("untracked", {}), (f"tracked, {args.analytics_processes} analytics processes",
                                            {"tracking": True, "analytics_processes": args.analytics_processes})]
        elif args.compare_sends:
            variants = [("publisher sends holding the GIL", {}), ("publisher sends releasing the GIL (pyzmq)", {"hold_gil_for_sends": False})]
        else:
            variants = [("", {})]
        for name, options in variants:
            if name:
                print(f"-- {name}")
            freeze = options.pop("freeze", False)
            pauses = GcPauses().install()
            if freeze:
                freeze_heap("bench")
            before = pauses.snapshot()
            try:
                measured = run(args.batch, args.sources, args.seconds, args.rounds, args.profile, **options)
                if args.compare_gc_freeze:
                    after = pauses.snapshot()
                    counts = [b - a for a, b in zip(before["collections"], after["collections"])]
                    paused = [round(b - a, 3) for a, b in zip(before["pause_s"], after["pause_s"])]
                    print(f"garbage collections during the run (generations 0/1/2): {counts}, paused {paused} s; "
                          f"objects a full collection walks {len(gc.get_objects())}, frozen {after['frozen']}")
            finally:
                pauses.uninstall()
                if freeze:
                    gc.unfreeze()
            medians[name] = {key: statistics.median(row[key] for row in measured) for key in measured[0]}
            print("median  " + format_row(medians[name]))
    finally:
        end_contention()
    if len(variants) == 2:
        (first, _), (second, _) = variants
        # tracked / untracked, frozen / not; holding / releasing
        over, under = (second, first) if args.compare_tracking or args.compare_gc_freeze else (first, second)
        print(f"results/s {over} / {under}: {medians[over]['results_s'] / medians[under]['results_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
