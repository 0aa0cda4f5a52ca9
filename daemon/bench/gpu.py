"""GPU benchmark (YOLOv3-tiny or --model): modes side by side in one run (``trtstream bench gpu``), per backend:
``torch``, and ``tensorrt`` = the real TensorRT adapter and GPU runtime on the GPU test double of the
``tensorrt`` module (tests/doubles/gpu_tensorrt.py: its engine runs the model in torch, fp16, at
``execute_async_v3``; TensorRT itself is not installed). Each backend's pipeline is measured against its
own engine-only figure.

engine-only   the model on inputs already on the device (the ceiling), batch B, S streams: the backend's
              own slots replaying their captured graphs (the plain-enqueue figure is printed too)
naive         the classic loop: pageable numpy, CPU letterbox, one stream, copy + execute + copy per frame
pipeline      the daemon's scheduler + publisher: CPU preprocessing into pinned slots, S streams x 2 slots
pipeline-gpu  the same with GPU preprocessing (frames decoded into pooled pinned buffers, one copy each to
              the device, one NVRTC kernel launch per batch) and decoding on the device (top candidates
              come back already decoded); "pageable": frames in ordinary memory, copied by the batcher

pipeline-nvdec  the same daemon path fed by NVDEC instead (--nvdec CLIP: 1080p H.264 decoded into device
              memory by 4 looping decoders, unpaced; the NV12 rows go through the same batched kernel)

Per mode: throughput; capture->publish latency p50/p95/p99 (pipeline modes, at saturation); frames per
joule from nvidia-smi's power draw (NVML); host RSS and GPU memory used at the end of the mode; and
accuracy against the FP32 ONNX Runtime reference on the same frames (label agreement of the matched
detections, mean box IoU). Prints one table. The first modes decode their frames beforehand.

Usage: trtstream bench gpu [--batch 32] [--streams 3] [--seconds 8] [--frames 1080p|native] [--nvdec CLIP] [--model ONNX]
       (--model assets/models/yolov8m_bench_640.onnx: YOLOv8m-class, random weights, throughput only)
       (scripts/bench-gpu is the same; scripts/gpu-check runs the GPU tests first)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from daemon.bench.compare import iou
from daemon.bench.resources import gpu_used_mib, rss_mib, slope_per_minute, thread_clocks
from daemon.gil import apply_switch_interval

REPO = Path(__file__).resolve().parents[2]  # a checkout: assets/ and configs/ live here
MODEL = REPO / "assets" / "models" / "yolov3_tiny_416.onnx"
VIDEO = REPO / "assets" / "media" / "bikes.mp4"
LABELS = REPO / "assets" / "labels" / "coco.txt"


class PowerMeter:
    """Samples nvidia-smi's power draw every 100 ms while a mode runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._process = None

    def __enter__(self):
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, text=True,
            )
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                self.samples.append(float(line.strip().split()[0]))
            except (ValueError, IndexError):
                pass

    def __exit__(self, *exc) -> None:
        if self._process:
            self._process.terminate()

    @property
    def watts(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def decode(frames_kind: str, count: int = 250) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VIDEO))
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(cv2.resize(image, (1920, 1080)) if frames_kind == "1080p" else image)
    return frames


def model_io() -> tuple[str, tuple[int, int], str, list[int]]:
    """MODEL's input name, input size (width, height), output name and output shape (batch 1), read from
    its ONNX: YOLOv3-tiny 416 ``images`` -> ``output`` [1, 2535, 85], a YOLOv8-style 640 model
    ``images`` -> ``output0`` [1, 84, 8400]."""
    from daemon.backends.torch import _specs

    inputs, outputs = _specs(MODEL)
    height, width = inputs[0].shape[2:]
    return inputs[0].name, (width, height), outputs[0].name, [1, *outputs[0].shape[1:]]


def make_pipeline():
    from daemon.config import DetectionConfig, PreprocessConfig
    from pipelines.detection import DetectionPipeline

    labels = LABELS.read_text().split("\n")[:80]
    input_name, input_size, output_name, output_shape = model_io()
    return DetectionPipeline(input_name, input_size, output_name, output_shape, labels, PreprocessConfig(), DetectionConfig(pad_value=127))


TORCH_COMPILE = False  # --torch-compile: every torch backend of this run with engine.torch.compile
BACKENDS = ("torch", "tensorrt")  # tensorrt: the adapter on tests/doubles/gpu_tensorrt.py (a TEST DOUBLE: torch computes)


def tensorrt_double_available() -> bool:
    """The GPU test double of TensorRT ships with the checkout's tests, not with the package."""
    return (REPO / "tests" / "doubles" / "gpu_tensorrt.py").is_file()


def make_backend(kind: str, batch: int, streams: int, cuda_graphs: bool = True, frame_transfer: str = "auto", hold_gil: bool = True,
                 compile_model: bool | None = None):
    """A backend as the daemon makes it: ``torch``, or ``tensorrt`` — the real TensorRT adapter and GPU
    runtime on the GPU test double of the ``tensorrt`` module (TensorRT 10.16 surface, fp16: its engine
    runs the model in torch at ``execute_async_v3``; stated in every row's name). ``compile_model``
    (torch; default ``--torch-compile``): engine.torch.compile."""
    from daemon.config import EngineConfig, ModelConfig, TensorRTConfig

    if kind == "torch":
        from daemon.backends.torch import torch_backend

        return torch_backend(MODEL, batch, streams, half=True, cuda_graphs=cuda_graphs, frame_transfer=frame_transfer, hold_gil=hold_gil,
                             compile_model=TORCH_COMPILE if compile_model is None else compile_model)
    if kind != "tensorrt":
        raise ValueError(f"unknown backend {kind!r}")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from daemon.backends.tensorrt import TensorRTBuilder
    from tests.doubles.gpu_tensorrt import GpuTensorRT

    engine = EngineConfig(backend="tensorrt", max_batch=batch, streams=streams, cuda_graphs=cuda_graphs, frame_transfer=frame_transfer,
                          hold_gil_for_enqueues=hold_gil, tensorrt=TensorRTConfig(precision="fp16"))
    builder = TensorRTBuilder(ModelConfig(path=MODEL, pipeline="detection"), engine, trt=GpuTensorRT("10.16").module)
    with tempfile.TemporaryDirectory(prefix="trtstream-bench-trt-") as scratch:
        plan = Path(scratch) / "model.engine"
        builder.build(MODEL, plan, None, lambda fraction, message: None)
        return builder.load(plan)


def make_unit(backend, gpu_pre: bool, frame_size: tuple[int, int]):
    """The serving unit the daemon would make for ``backend`` (daemon.serving.build_unit)."""
    from daemon.config import DetectionConfig, EngineConfig, ModelConfig
    from daemon.serving import build_unit

    model = ModelConfig(path=MODEL, pipeline="detection", labels=LABELS.read_text().split("\n")[:80], detection=DetectionConfig(pad_value=127))
    return build_unit(model, EngineConfig(preprocess="gpu" if gpu_pre else "cpu", max_frame_size=frame_size), backend)


def engine_only(kind: str, batch: int, streams: int, seconds: float, graphs: bool = True, compile_model: bool | None = None) -> float:
    """The model alone on inputs already on the device: the backend's own slots, one per stream, each
    replaying its captured graph (``graphs``, what the pipeline replays) or enqueuing eagerly
    (DeviceRuntime.run_engine: no copies, no preprocessing, no decoding). The pipeline's ceiling, with
    the same engine settings."""
    backend = make_backend(kind, batch, streams, cuda_graphs=graphs, compile_model=compile_model)
    if compile_model and not backend.info.details.get("compiled"):
        backend.close()
        raise RuntimeError("torch.compile failed (logged above)")
    slots = [backend.create_slot(index) for index in range(streams)]
    rng = np.random.default_rng(0)
    for slot in slots:  # realistic input values on the device, once
        for array in slot.inputs.values():
            array[...] = rng.random(array.shape, dtype=np.float32).astype(array.dtype)
        backend.submit(slot, batch)
        backend.wait(slot)
    done, rounds, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for slot in slots:
            backend.run_engine(slot, batch)
        done += batch * streams
        rounds += 1
        if rounds % 8 == 0:
            for slot in slots:
                backend.wait(slot)
    for slot in slots:
        backend.wait(slot)
    elapsed = time.perf_counter() - started
    backend.close()
    return done / elapsed


def pinned_copies_of(frames: list[np.ndarray], count: int):
    """``count`` of ``frames`` in a pinned pool, as a reader would have decoded them (filled once)."""
    from daemon.pinned import PinnedImagePool

    pool = PinnedImagePool(count, frames[0].shape)
    images = []
    for n in range(count):
        image = pool.take()
        np.copyto(image, frames[n % len(frames)])
        images.append(image)
    return pool, images


def device_path(kind: str, frames: list[np.ndarray], batch: int, streams: int, seconds: float, frame_transfer: str, hold_gil: bool = True) -> dict:
    """Everything a pipeline batch costs the GPU, and nothing of the host path: the backend's own slots
    (two per stream, as the scheduler has), frames already in pinned memory staged by one thread, then
    ``submit`` (the frames' transfer, the preprocessing launch, the graph, the decoding, the copy back)
    and ``wait``, round robin. The pipeline's device ceiling, beside engine-only's model-alone ceiling.
    Also the GPU time of each step of one batch on an idle GPU (median of 20)."""
    backend = make_backend(kind, batch, streams, frame_transfer=frame_transfer, hold_gil=hold_gil)
    unit = make_unit(backend, True, (frames[0].shape[1], frames[0].shape[0]))
    pipeline = unit.pipeline
    pool, images = pinned_copies_of(frames, batch)
    slots = [backend.create_slot(index) for index in range(streams * 2)]

    def stage(slot) -> None:
        for row, image in enumerate(images):
            backend.stage(slot, row, image, pipeline)

    phases: dict[str, list[float]] = {}
    for _ in range(20):
        stage(slots[0])
        for name, ms in backend.phase_times(slots[0], batch).items():
            phases.setdefault(name, []).append(ms)
    for slot in slots:
        stage(slot)
        backend.submit(slot, batch)
    done, index, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        slot = slots[index % len(slots)]
        backend.wait(slot)
        stage(slot)
        backend.submit(slot, batch)
        done += batch
        index += 1
    for slot in slots:
        backend.wait(slot)
    elapsed = time.perf_counter() - started
    transfer, enqueues = backend.info.details.get("frame_transfer"), backend.info.details.get("enqueues")
    backend.close()
    pool.close()
    return {"fps": done / elapsed, "phases_ms": {name: float(np.median(v)) for name, v in phases.items()}, "frame_transfer": transfer, "enqueues": enqueues}


def naive(frames: list[np.ndarray], seconds: float) -> float:
    import torch

    from daemon.backends.torch import TorchExecutor

    executor = TorchExecutor(MODEL, 1, half=True, channels_last=False)
    pipeline = make_pipeline()
    buffer = np.zeros((1, 3, pipeline.input_size[1], pipeline.input_size[0]), np.float32)
    done, started = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            image = frames[done % len(frames)]
            meta = pipeline.preprocess(image, buffer[0])
            x = torch.from_numpy(buffer).cuda().half()  # pageable copy, default stream
            out = executor.forward(x)[0].float().cpu().numpy()  # synchronous copy back
            pipeline.postprocess({pipeline.output_name: out}, 0, meta)
            done += 1
    executor.close()
    return done / (time.perf_counter() - started)


def pipeline_mode(frames: list[np.ndarray], batch: int, streams: int, seconds: float, gpu_pre: bool,
                  sources: int = 4, paced_fps: float | None = None, sample_memory: bool = False, pinned: bool = True,
                  nvdec_clip: Path | None = None, kind: str = "torch", frame_transfer: str = "auto", prefilled: bool = False,
                  hold_gil: bool = True, slots_per_stream: int = 2, tracking: bool = False, analytics_processes: int = 0,
                  early_slot_release: bool = True) -> dict:
    """The daemon's own scheduler, slots and publisher over an in-memory source of decoded frames.
    ``paced_fps``: each of ``sources`` delivers at that rate like a live camera (drop-oldest queues);
    otherwise every source delivers as fast as the pipeline takes frames (blocking queues).
    ``pinned`` (with GPU preprocessing, as the daemon's readers do): each source "decodes" its frame into a
    buffer of its pinned pool (the copy a decoder's output write costs, on the source's thread); without
    it frames are ordinary arrays and the batcher copies them into pinned staging. ``prefilled``: the
    pools' buffers are filled once and handed out as they are (no copy on the sources' threads: what the
    host-path benchmark does). ``hold_gil``: the backend's enqueues keep the GIL (engine.hold_gil_for_enqueues).
    ``slots_per_stream``: the scheduler's slots per CUDA stream (the daemon's: 2, double buffering).
    ``early_slot_release`` False: each slot is held until its batch is postprocessed (before the daemon
    freed it once the outputs were copied off; the side-by-side row of that change).
    ``tracking``: every source tracked (ByteTrack, default [tracking]) on the completer, as the daemon does;
    with ``analytics_processes`` in that many worker processes (daemon.analytics_processes).
    Also reports where the time went: each thread's CPU time per result and the scheduler's own
    accounting of its two threads (PipelineStats.batcher/completer) as shares of the measured time."""
    from daemon.config import DropPolicy, PublisherConfig, SourceConfig
    from daemon.entities import Frame
    from daemon.framequeue import Multiplexer
    from daemon.publisher import Publisher
    from daemon.scheduler import Scheduler
    from daemon.stats import SourceStats

    backend = make_backend(kind, batch, streams, frame_transfer=frame_transfer, hold_gil=hold_gil)
    frame_size = (1920, 1080) if nvdec_clip is not None else (frames[0].shape[1], frames[0].shape[0])
    unit = make_unit(backend, gpu_pre, frame_size)
    mux = Multiplexer()
    policy = DropPolicy.DROP_OLDEST if paced_fps else DropPolicy.BLOCK
    stale = SourceConfig.model_fields["stale_after_frames"].default if paced_fps else 0  # as the daemon's live sources
    queues = [mux.add_queue(f"cam{i}", 4 if paced_fps else batch * 2, policy, stale) for i in range(sources)]
    for queue in queues:
        queue.set_frame_interval(1.0 / paced_fps if paced_fps else None)
    stats = {f"cam{i}": SourceStats(f"cam{i}", "memory", "synthetic") for i in range(sources)}
    run_dir = tempfile.mkdtemp(prefix="trtstream-gpu-bench-")
    publisher = Publisher(PublisherConfig(endpoints=[f"ipc://{run_dir}/bench.ipc"], send_hwm=1000, queue_size=100000), "0" * 32, {"id": "bench", "sha256": "0" * 64, "pipeline": "detection"}, stats, lambda: {})
    publisher.start()
    analytics = None
    if tracking:
        from daemon.analytics.stage import AnalyticsSettings
        from daemon.analytics.workers import make_analytics
        from daemon.analyticsconfig import TrackingConfig

        settings = AnalyticsSettings(TrackingConfig(), {f"cam{i}": 1 for i in range(sources)}, {}, {}, tuple(unit.pipeline.labels))
        analytics = make_analytics(settings, analytics_processes)
    scheduler = Scheduler(mux, unit, publisher.submit, stats, max_batch=batch, max_wait_s=0.002, slots=streams * slots_per_stream,
                          sink_many=publisher.submit_many, analytics=analytics, sink_events=publisher.submit_events,
                          early_slot_release=early_slot_release)
    scheduler.warm_up()
    stop = threading.Event()
    from daemon.pinned import PinnedImagePool

    pools = [PinnedImagePool((4 + 12) if paced_fps else (batch * 2 + batch * streams * slots_per_stream // sources + 8), frames[0].shape)
             for _ in range(sources)] if (pinned and gpu_pre) else None

    if pools and prefilled:  # every buffer holds a frame once; taking one is all a source does
        for index, pool in enumerate(pools):
            taken = []
            while (image := pool.take()) is not None:
                taken.append(image)
            for n, image in enumerate(taken):
                np.copyto(image, frames[(n * sources + index) % len(frames)])
            for image in taken:
                image.release()
            pool.misses = 0  # the empty take that ended the filling

    def decoded(index: int, image: np.ndarray) -> np.ndarray:
        target = pools[index].take(stop if prefilled else None) if pools else None
        if target is None:
            return image
        if not prefilled:
            np.copyto(target, image)
        return target

    def feed_nvdec(index: int) -> None:
        """An NVDEC source as the daemon runs it (pooled device images), looping, unpaced."""
        from daemon.capture import read_frame
        from daemon.gpu.nvdec import NvdecProducer

        producer, queue, n = NvdecProducer(str(nvdec_clip), batch * 2 + 32, stop), queues[index], 0
        try:
            while not stop.is_set():
                image, pts = read_frame(producer)
                if image is None:
                    if stop.is_set() or not producer.rewind():
                        break
                    continue
                if not queue.put(Frame(f"cam{index}", n, pts, image, time.time(), time.monotonic()), stop):
                    image.release()
                    break
                stats[f"cam{index}"].frames_captured += 1
                n += 1
        finally:
            queue.close("shutdown")
            producer.close()

    def feed(index: int) -> None:
        if nvdec_clip is not None:
            return feed_nvdec(index)
        queue, n = queues[index], 0
        while not stop.is_set():
            image = decoded(index, frames[(n * sources + index) % len(frames)])
            if not queue.put(Frame(f"cam{index}", n, None, image, time.time(), time.monotonic()), stop):
                break
            stats[f"cam{index}"].frames_captured += 1
            n += 1
        queue.close("shutdown")

    def paced() -> None:
        """One thread plays every camera: frame n of camera i is due at n / fps (+ a per-camera phase)."""
        interval, start, n = 1.0 / paced_fps, time.monotonic(), 0
        while not stop.is_set():
            due = start + n * interval
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            now_wall, now = time.time(), time.monotonic()
            for index, queue in enumerate(queues):
                queue.put(Frame(f"cam{index}", n, None, decoded(index, frames[(n + index * 7) % len(frames)]), now_wall, now))
                stats[f"cam{index}"].frames_captured += 1
            n += 1
        for queue in queues:
            queue.close("shutdown")

    feeders = [threading.Thread(target=paced, name="source-0", daemon=True)] if paced_fps else [
        threading.Thread(target=feed, args=(i,), name=f"source-{i}", daemon=True) for i in range(sources)]
    scheduler.start()
    for thread in feeders:
        thread.start()
    time.sleep(1.0)  # settle
    clocks = thread_clocks(lambda name: name in ("batcher", "completer", "handover", "publisher") or name.startswith("source-"))
    cpu0 = {name: time.clock_gettime(clock) for name, clock in clocks.items()}
    seconds0 = (dict(vars(scheduler.stats.batcher)), dict(vars(scheduler.stats.completer)))
    start_count = sum(s.frames_published for s in stats.values())
    for s in stats.values():
        s.latency = type(s.latency)()
    started = time.perf_counter()
    memory = []
    with PowerMeter() as power:
        while time.perf_counter() - started < seconds:
            time.sleep(min(10.0, seconds / 10) if sample_memory else seconds)
            if sample_memory:
                memory.append((time.perf_counter() - started, rss_mib(), gpu_used_mib()))
        done = sum(s.frames_published for s in stats.values()) - start_count
        elapsed = time.perf_counter() - started
        cpu = {name: time.clock_gettime(clock) - cpu0[name] for name, clock in clocks.items()}
        shares = {f"{thread}.{phase}": (value - before[phase]) / elapsed
                  for thread, now, before in (("batcher", vars(scheduler.stats.batcher), seconds0[0]), ("completer", vars(scheduler.stats.completer), seconds0[1]))
                  for phase, value in now.items()}
    cpu_us = {"batcher": cpu.get("batcher", 0.0), "completer": cpu.get("completer", 0.0), "handover": cpu.get("handover", 0.0),
              "publisher": cpu.get("publisher", 0.0),
              "sources": sum(v for k, v in cpu.items() if k.startswith("source-"))}
    cpu_us = {name: value / max(done, 1) * 1e6 for name, value in cpu_us.items()}
    dropped = sum(q.dropped for q in queues)
    backlog = publisher.stats.queue_depth
    publisher_dropped = publisher.stats.dropped_queue_full + publisher.stats.dropped_socket
    misses = sum(pool.misses for pool in pools) if pools else None
    rss_end, gpu_end = rss_mib(), gpu_used_mib()
    stop.set()
    scheduler.join(30)
    publisher.stop()
    if analytics is not None:
        analytics.close()
    backend.close()
    for pool in pools or ():
        pool.close()
    latencies = np.concatenate([s.latency.snapshot() for s in stats.values()])
    fps = done / elapsed
    return {
        "fps": fps,
        "p50": np.percentile(latencies, 50) * 1000, "p95": np.percentile(latencies, 95) * 1000, "p99": np.percentile(latencies, 99) * 1000,
        "watts": power.watts, "batch": scheduler.stats.snapshot()["mean_batch_size"], "dropped": dropped, "memory": memory,
        "pinned_misses": misses, "rss_mib": rss_end, "gpu_mib": gpu_end, "cpu_us": cpu_us, "shares": shares,
        "publisher_backlog": backlog, "publisher_dropped": publisher_dropped,
    }


def where_time_went(result: dict) -> str:
    """One line: CPU µs per result of each thread, and the scheduler threads' time by phase (share of wall)."""
    cpu = "  ".join(f"{name} {value:.1f}" for name, value in result["cpu_us"].items())
    shares = "  ".join(f"{name} {value:.0%}" for name, value in result["shares"].items())
    return (f"    CPU µs/result: {cpu}  |  time: {shares}  |  publisher backlog {result['publisher_backlog']}, "
            f"dropped {result['publisher_dropped']}")


def accuracy(frames: list[np.ndarray], gpu_pre: bool, kind: str = "torch") -> tuple[float, float]:
    """Against FP32 ONNX Runtime on the same frames: share of reference detections (score >= 0.3) found
    with the same label at IoU >= 0.5, and their mean IoU. The backend is configured as the daemon
    configures it (device decoding included)."""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.bench.compare import side_by_side
    from daemon.config import OnnxRuntimeConfig

    reference = OnnxRuntimeBackend(MODEL, 8, 1, OnnxRuntimeConfig())
    backend = make_backend(kind, 8, 1)
    unit = make_unit(backend, gpu_pre, (frames[0].shape[1], frames[0].shape[0]))
    pipeline = unit.pipeline
    ref_slot, slot = reference.create_slot(0), backend.create_slot(0)
    agree, ious, total = 0, [], 0
    for start in range(0, min(len(frames), 64), 8):
        metas, want_all, have_all = side_by_side(reference, ref_slot, backend, slot, pipeline, frames[start : start + 8])
        for row, meta in enumerate(metas):
            want = pipeline.postprocess(want_all, row, meta)["detections"]
            have = pipeline.postprocess(have_all, row, meta, backend.info.decodes_on_device)["detections"]
            for d in want:
                total += 1
                best = max((iou(d["box"], h["box"]) for h in have if h["label"] == d["label"]), default=0.0)
                if best >= 0.5:
                    agree += 1
                    ious.append(best)
    backend.close()
    reference.close()
    return agree / max(total, 1), float(np.mean(ious)) if ious else 0.0


def _nv12_planes(frame, width: int, height: int) -> tuple[int, int, int]:
    """(luma pointer, chroma pointer, pitch) of a decoded NV12 frame in device memory."""
    try:
        planes = frame.cuda()
        y, uv = planes[0].__cuda_array_interface__, planes[1].__cuda_array_interface__
        pitch = y["strides"][0] if y.get("strides") else width
        return int(y["data"][0]), int(uv["data"][0]), int(pitch)
    except Exception:
        cai = frame.__cuda_array_interface__
        pitch = cai["strides"][0] if cai.get("strides") else width
        return int(cai["data"][0]), int(cai["data"][0]) + pitch * height, int(pitch)


def nvdec_mode(clip: Path, batch: int, decoders: int, seconds: float) -> dict:
    """NVDEC -> NV12 in device memory -> one NVRTC kernel per frame -> model -> on-device reduction ->
    host decoding of boxes: no host round trip of pixels. ``decoders`` clips decode in round robin."""
    import PyNvVideoCodec as nvc
    import torch

    from daemon import cuda
    from daemon.backends.torch import TorchExecutor
    from daemon.gpu.preprocess import GpuPreprocessor, letterbox_params
    from pipelines.imageops import letterbox_geometry

    context = cuda.primary_context_handle(0)
    stream = cuda.Stream()
    pipeline = make_pipeline()
    executor = TorchExecutor(MODEL, batch, half=True)
    preprocessor = GpuPreprocessor(pipeline.normalizer, pipeline.pad_grey, np.float16)
    # One frame per call, round robin over the decoders: measured faster on the H100 than taking
    # several frames from one decoder per call (1078 vs 636 img/s with 4 decoders).
    sources = [nvc.SimpleDecoder(str(clip), gpu_id=0, cuda_context=context, cuda_stream=stream.handle, use_device_memory=True,
                                 output_color_type=nvc.OutputColorType.NATIVE) for _ in range(decoders)]
    first = sources[0].get_batch_frames(1)[0]
    planes = first.cuda()
    shapes = [p.__cuda_array_interface__ for p in planes]
    print(f"nvdec frame: {len(planes)} planes: " + "; ".join(f"shape {c.get('shape')} strides {c.get('strides')} {c.get('typestr')}" for c in shapes), flush=True)
    height, width = int(shapes[0]["shape"][0]), int(shapes[0]["shape"][1])
    input_w, input_h = pipeline.input_size
    geometry_box = letterbox_geometry(width, height, input_w, input_h)
    geometry = letterbox_params(width, height, geometry_box, input_w, input_h)
    inputs = torch.empty((batch, 3, input_h, input_w), dtype=torch.float16, device="cuda")
    row_bytes = inputs[0].numel() * inputs.element_size()
    external = torch.cuda.ExternalStream(stream.handle)
    done, detections, started = 0, 0, time.perf_counter()
    index = 0
    while time.perf_counter() - started < seconds:
        row = 0
        while row < batch:
            source = sources[index % decoders]
            index += 1
            frames = source.get_batch_frames(1)
            if not frames:
                source.seek_to_index(0)
                continue
            y_ptr, uv_ptr, pitch = _nv12_planes(frames[0], width, height)
            preprocessor.nv12(stream, y_ptr, uv_ptr, width, height, pitch, True, inputs.data_ptr() + row * row_bytes, geometry)
            row += 1
        with torch.cuda.stream(external), torch.inference_mode():
            decoded = pipeline.device_decode(executor.forward(inputs)[0]).float().cpu().numpy()
        results = pipeline.postprocess_batch({pipeline.output_name: decoded}, [geometry_box] * batch, decoded=True)
        detections += sum(len(r["detections"]) for r in results)
        done += batch
    elapsed = time.perf_counter() - started
    return {"fps": done / elapsed, "frames": done, "detections_per_frame": detections / max(done, 1), "size": (width, height)}


def main(argv: list[str] | None = None) -> int:
    global MODEL, VIDEO, LABELS, TORCH_COMPILE  # the modes read them (set from --model, --video, --labels, --torch-compile)
    parser = argparse.ArgumentParser(prog="trtstream bench gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--streams", type=int, default=3, help="CUDA streams (the daemon's engine.streams = auto on a GPU)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--frames", choices=["native", "1080p"], default="native")
    parser.add_argument("--realtime", type=int, nargs="*", default=[], help="also run N cameras at 30 fps each (latency under a live load)")
    parser.add_argument("--soak", type=float, default=0, help="also run a paced soak of this many seconds and report memory slopes")
    parser.add_argument("--nvdec", type=Path, help="also run the NVDEC modes on this 1080p H.264 clip (scripts/make-test-clips)")
    parser.add_argument("--only-nvdec", action="store_true", help="run only the NVDEC mode")
    parser.add_argument("--modes", default="engine-eager,engine,naive,pipeline,pipeline-gpu-pageable,pipeline-gpu,accuracy,nvdec-probe",
                        help="comma-separated subset of the default (engine is always run: it is the ratios' base), and the "
                        "diagnostics: device-path (the pipeline's device work without its host path, per frame transfer, with "
                        "GPU ms per step), pipeline-gpu-batched, pipeline-gpu-mapped (the other frame transfers), "
                        "pipeline-gpu-prefilled (no copy on the sources' threads), pipeline-gpu-gil-releasing and "
                        "pipeline-gpu-prefilled-gil-releasing (engine.hold_gil_for_enqueues = false), pipeline-gpu-prefilled-batched, "
                        "pipeline-gpu-prefilled-3slots (three scheduler slots per stream), pipeline-gpu-laterelease and "
                        "pipeline-gpu-prefilled-laterelease (slots held until their batch is postprocessed, as before), pipeline-gpu-tracked and "
                        "pipeline-gpu-prefilled-tracked (every source tracked: ByteTrack on the completer), "
                        "pipeline-gpu-prefilled-32sources and pipeline-gpu-prefilled-32sources-tracked (32 sources), "
                        "pipeline-gpu-prefilled-tracked-4workers and pipeline-gpu-prefilled-32sources-tracked-4workers "
                        "(tracked in 4 analytics worker processes), engine-compiled (torch: engine-only with "
                        "engine.torch.compile, beside the plain one)")
    parser.add_argument("--backends", default="torch,tensorrt",
                        help="comma-separated: torch, tensorrt (the real adapter and GPU runtime on the GPU test double of TensorRT)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="every torch backend of this run (its engine-only too) with engine.torch.compile = true")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for this run (the daemon's default is used otherwise)")
    parser.add_argument("--model", type=Path, default=MODEL, help="a YOLO detector's ONNX, input and output read from it: YOLOv3-tiny 416 "
                        "(default, scripts/fetch-assets) or the YOLOv8m-class assets/models/yolov8m_bench_640.onnx (scripts/fetch-assets --bench-models)")
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--labels", type=Path, default=LABELS)
    args = parser.parse_args(argv)
    apply_switch_interval()  # the daemon's GIL switch interval (daemon/gil.py): its pipeline, measured as it runs
    from daemon.backends.torch import torch_usable

    if not torch_usable():
        print("trtstream bench gpu: needs an NVIDIA GPU with PyTorch and onnx2torch (on a CPU machine: trtstream bench cpu)", file=sys.stderr)
        return 2
    MODEL, VIDEO, LABELS, TORCH_COMPILE = args.model, args.video, args.labels, args.torch_compile
    for what, path in (("--model", MODEL), ("--video", VIDEO), ("--labels", LABELS), ("--nvdec", args.nvdec)):
        if path is not None and not path.is_file():
            print(f"trtstream bench gpu: {what} {path}: no such file (scripts/fetch-assets, scripts/make-test-clips)", file=sys.stderr)
            return 2
    modes = set(args.modes.split(","))
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    frames = decode(args.frames)
    card = torch.cuda.get_device_name(0)
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; card {card}; torch {torch.__version__}; frames {frames[0].shape[1]}x{frames[0].shape[0]} ({len(frames)} decoded); "
          f"batch {args.batch}; streams {args.streams}; {args.seconds}s per mode; {os.cpu_count()} CPU cores", flush=True)
    if args.nvdec and ("nvdec-probe" in modes or args.only_nvdec):
        for decoders in (1, 4):
            try:
                result = nvdec_mode(args.nvdec, args.batch, decoders, args.seconds)
                print(f"nvdec {decoders} decoder(s), {result['size'][0]}x{result['size'][1]} H.264: {result['fps']:.1f} img/s end to end "
                      f"(decode, NV12 kernel, model, reduction, box decoding), {result['detections_per_frame']:.2f} detections/frame", flush=True)
            except Exception as exc:  # report and go on with the other modes
                import traceback

                traceback.print_exc()
                print(f"nvdec mode failed: {type(exc).__name__}: {exc}", flush=True)
                break
        if args.only_nvdec:
            return 0
    if args.nvdec:
        modes.add("pipeline-nvdec")
    rows = []  # (name, img/s, pipeline result or None, the engine-only img/s of that backend)
    kinds = [k for k in args.backends.split(",") if k]
    if "tensorrt" in kinds and not tensorrt_double_available():
        print("tensorrt (on the GPU test double) needs a checkout with tests/doubles: skipped", flush=True)
        kinds.remove("tensorrt")
    if not kinds:
        print("trtstream bench gpu: --backends named no backend to run", file=sys.stderr)
        return 2
    label = {"torch": "torch", "tensorrt": "trt-on-double"}
    for kind in kinds:
        tag = label[kind]
        if "engine-eager" in modes:
            eager = engine_only(kind, args.batch, args.streams, args.seconds, graphs=False)
            print(f"{tag}: engine-only, plain enqueues {eager:9.1f} img/s (for reference)", flush=True)
        base = engine_only(kind, args.batch, args.streams, args.seconds)
        rows.append((f"engine-only [{tag}]", base, None, base))
        print(f"{tag}: engine-only (CUDA graphs{', compiled' if TORCH_COMPILE and kind == 'torch' else ''}) {base:9.1f} img/s", flush=True)
        if "engine-compiled" in modes and kind == "torch":
            other = not TORCH_COMPILE
            started = time.perf_counter()
            try:
                fps = engine_only(kind, args.batch, args.streams, args.seconds, compile_model=other)
            except Exception as exc:  # report and go on with the other modes
                print(f"{tag}: engine-only with compile={other} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
            else:
                rows.append((f"engine-only, compile={other} [{tag}]", fps, None, base))
                print(f"{tag}: engine-only (CUDA graphs, compile={other}) {fps:9.1f} img/s ({fps / base:.3f} x the other; "
                      f"{time.perf_counter() - started:.0f} s with compilation)", flush=True)
        if kind == "torch":
            naive_fps = naive(frames, args.seconds) if "naive" in modes else float("nan")
            rows.append(("naive [torch]", naive_fps, None, base))
            print(f"naive       {naive_fps:9.1f} img/s", flush=True)
        if "device-path" in modes:
            for transfer, hold in (("copies", True), ("copies", False), ("batched", True), ("mapped", True)):
                result = device_path(kind, frames, args.batch, args.streams, args.seconds, transfer, hold)
                phases = ", ".join(f"{name} {ms:.3f}" for name, ms in result["phases_ms"].items())
                print(f"{tag}: device path, frames {result['frame_transfer']:<8}, enqueues {result['enqueues']}: {result['fps']:9.1f} img/s ({result['fps'] / base:.3f} x engine-only); "
                      f"one batch on an idle GPU, ms: {phases}", flush=True)
        variants = (
            ("pipeline", dict(gpu_pre=False, pinned=False)),
            ("pipeline-gpu, pageable", dict(gpu_pre=True, pinned=False)),
            ("pipeline-gpu", dict(gpu_pre=True, pinned=True)),
            ("pipeline-gpu, batched", dict(gpu_pre=True, pinned=True, frame_transfer="batched")),
            ("pipeline-gpu, mapped", dict(gpu_pre=True, pinned=True, frame_transfer="mapped")),
            ("pipeline-gpu, prefilled", dict(gpu_pre=True, pinned=True, prefilled=True)),
            ("pipeline-gpu, prefilled, batched", dict(gpu_pre=True, pinned=True, prefilled=True, frame_transfer="batched")),
            ("pipeline-gpu, prefilled, 3 slots", dict(gpu_pre=True, pinned=True, prefilled=True, slots_per_stream=3)),
            ("pipeline-gpu, late release", dict(gpu_pre=True, pinned=True, early_slot_release=False)),
            ("pipeline-gpu, prefilled, late release", dict(gpu_pre=True, pinned=True, prefilled=True, early_slot_release=False)),
            ("pipeline-gpu, tracked", dict(gpu_pre=True, pinned=True, tracking=True)),
            ("pipeline-gpu, prefilled, tracked", dict(gpu_pre=True, pinned=True, prefilled=True, tracking=True)),
            ("pipeline-gpu, prefilled, 32 sources", dict(gpu_pre=True, pinned=True, prefilled=True, sources=32)),
            ("pipeline-gpu, prefilled, 32 sources, tracked", dict(gpu_pre=True, pinned=True, prefilled=True, sources=32, tracking=True)),
            ("pipeline-gpu, prefilled, tracked, 4 workers", dict(gpu_pre=True, pinned=True, prefilled=True, tracking=True, analytics_processes=4)),
            ("pipeline-gpu, prefilled, 32 sources, tracked, 4 workers",
             dict(gpu_pre=True, pinned=True, prefilled=True, sources=32, tracking=True, analytics_processes=4)),
            ("pipeline-gpu, gil-releasing", dict(gpu_pre=True, pinned=True, hold_gil=False)),
            ("pipeline-gpu, prefilled, gil-releasing", dict(gpu_pre=True, pinned=True, prefilled=True, hold_gil=False)),
        )
        for name, options in variants:
            mode = name.replace(", ", "-").replace(" ", "")
            if mode not in modes or (kind != "torch" and name not in ("pipeline-gpu", "pipeline-gpu, prefilled", "pipeline-gpu, gil-releasing",
                                                                 "pipeline-gpu, prefilled, batched", "pipeline-gpu, prefilled, 3 slots",
                                                                 "pipeline-gpu, late release", "pipeline-gpu, prefilled, late release",
                                                                 "pipeline-gpu, tracked", "pipeline-gpu, prefilled, tracked",
                                                                 "pipeline-gpu, prefilled, 32 sources", "pipeline-gpu, prefilled, 32 sources, tracked",
                                                                 "pipeline-gpu, prefilled, tracked, 4 workers",
                                                                 "pipeline-gpu, prefilled, 32 sources, tracked, 4 workers")):
                continue  # the other variants are host-path diagnostics: the torch rows answer them
            result = pipeline_mode(frames, args.batch, args.streams, args.seconds, kind=kind, **options)
            rows.append((f"{name} [{tag}]", result["fps"], result, base))
            print(f"{tag}: {name:<12}{result['fps']:9.1f} img/s ({result['fps'] / base:.3f} x its engine-only)  p50 {result['p50']:.1f} ms  "
                  f"p95 {result['p95']:.1f} ms  p99 {result['p99']:.1f} ms  batch {result['batch']:.1f}  pinned-pool misses {result['pinned_misses']}", flush=True)
            print(where_time_went(result), flush=True)
        if "pipeline-nvdec" in modes and args.nvdec:
            result = pipeline_mode(frames, args.batch, args.streams, args.seconds, True, nvdec_clip=args.nvdec, kind=kind)
            rows.append((f"pipeline-nvdec [{tag}]", result["fps"], result, base))
            print(f"{tag}: pipeline-nvdec {result['fps']:9.1f} img/s  p50 {result['p50']:.1f} ms  p95 {result['p95']:.1f} ms  batch {result['batch']:.1f}", flush=True)
            print(where_time_went(result), flush=True)
    naive_fps = next((fps for name, fps, _, _ in rows if name.startswith("naive")), float("nan"))
    for cameras in args.realtime:
        result = pipeline_mode(frames, args.batch, args.streams, args.seconds, True, sources=cameras, paced_fps=30.0)
        print(f"realtime {cameras} cameras x 30 fps ({frames[0].shape[1]}x{frames[0].shape[0]}): {result['fps']:.1f} img/s published, "
              f"{result['dropped']} dropped, p50 {result['p50']:.1f} ms, p95 {result['p95']:.1f} ms, p99 {result['p99']:.1f} ms, batch {result['batch']:.1f}", flush=True)
    if args.soak:
        cameras = args.realtime[0] if args.realtime else 16
        result = pipeline_mode(frames, args.batch, args.streams, args.soak, True, sources=cameras, paced_fps=30.0, sample_memory=True)
        rss = slope_per_minute([(t, r) for t, r, _ in result["memory"]])
        gpu = slope_per_minute([(t, g) for t, _, g in result["memory"]])
        print(f"soak {args.soak:.0f}s, {cameras} cameras x 30 fps: {result['fps']:.1f} img/s, {result['dropped']} dropped, p95 {result['p95']:.1f} ms; "
              f"RSS {result['memory'][0][1]:.0f} -> {result['memory'][-1][1]:.0f} MiB (slope {rss:+.2f} MiB/min), "
              f"GPU used {result['memory'][0][2]:.0f} -> {result['memory'][-1][2]:.0f} MiB (slope {gpu:+.2f} MiB/min)", flush=True)
    print()
    print(f"{'mode [backend]':<40}{'img/s':>10}{'x own engine':>13}{'x naive':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'img/J':>8}{'RSS MiB':>9}{'GPU MiB':>9}")
    for name, fps, result, base in rows:
        lat = result or {}
        joules = f"{fps / result['watts']:.1f}" if result and result.get("watts") else "-"
        print(f"{name:<40}{fps:>10.1f}{fps / base:>13.3f}{fps / naive_fps:>9.2f}"
              f"{lat.get('p50', float('nan')):>8.1f}{lat.get('p95', float('nan')):>8.1f}{lat.get('p99', float('nan')):>8.1f}{joules:>8}"
              f"{lat.get('rss_mib', float('nan')):>9.0f}{lat.get('gpu_mib', float('nan')):>9.0f}")
    if "accuracy" not in modes:
        return 0
    for kind in kinds:
        agreement_cpu, iou_cpu = accuracy(frames, False, kind)
        agreement_gpu, iou_gpu = accuracy(frames, True, kind)
        print(f"accuracy [{label[kind]}] vs FP32 ONNX Runtime (64 frames): CPU preprocessing {agreement_cpu:.1%} detections matched, "
              f"mean IoU {iou_cpu:.3f}; GPU preprocessing {agreement_gpu:.1%}, mean IoU {iou_gpu:.3f}")
    print(f"GPU memory: max allocated by torch {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0

