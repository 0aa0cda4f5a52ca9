"""GPU tests: the CUDA layer, NVRTC preprocessing against the CPU path, the torch backend against the
FP32 ONNX Runtime reference, and the daemon on the GPU. Marker ``gpu``; skipped (with the reason) on
machines without an NVIDIA GPU. Run them on a GPU machine with ``scripts/gpu-check``."""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.bench.compare import iou
from daemon.config import DetectionConfig, OnnxRuntimeConfig, PreprocessConfig

from .conftest import asset, bikes_frames, gpu_marks



pytestmark = gpu_marks()


def test_cuda_layer_round_trip_through_pinned_and_device_memory():
    from daemon import cuda

    data = np.arange(1 << 20, dtype=np.float32)
    with cuda.PinnedBuffer(data.nbytes) as up, cuda.PinnedBuffer(data.nbytes) as down, cuda.DeviceBuffer(data.nbytes) as device, cuda.Stream() as stream, cuda.Event() as event:
        host_up, host_down = up.array(np.float32, data.shape), down.array(np.float32, data.shape)
        host_up[:] = data
        cuda.memcpy_htod_async(device.ptr, host_up, stream)
        cuda.memcpy_dtoh_async(host_down, device.ptr, stream)
        event.record(stream)
        event.synchronize()
        assert event.query()
        np.testing.assert_array_equal(host_down, data)
    props = cuda.device_properties(0)
    assert props["name"] and props["compute_capability"].count(".") == 1
    assert cuda.cuda_versions()["driver"]


def test_driver_version_read_through_ctypes_is_the_runtime_s_and_fits_the_bindings():
    """The start-up check (issue 9) reads libcuda directly; on a real driver it must agree with
    cudaDriverGetVersion and find the installed bindings fit."""
    from daemon import cuda

    major, minor = cuda.driver_cuda_version()
    assert cuda.cuda_versions()["driver"] == f"{major}.{minor}"
    assert cuda.bindings_version() is not None
    assert cuda.cuda_mismatch() is None and cuda.bindings_fit_driver()


def _gpu_preprocess(pipeline, image: np.ndarray, dtype) -> np.ndarray:
    from daemon import cuda
    from daemon.gpu.preprocess import GpuPreprocessor

    meta, geometry = pipeline.plan(image.shape)
    width, height = pipeline.input_size
    out_bytes = 3 * width * height * np.dtype(dtype).itemsize
    preprocessor = GpuPreprocessor(pipeline.normalizer, pipeline.pad_grey, dtype)
    with cuda.PinnedBuffer(image.nbytes) as src_host, cuda.DeviceBuffer(image.nbytes) as src, cuda.DeviceBuffer(out_bytes) as dst, cuda.PinnedBuffer(out_bytes) as out_host, cuda.Stream() as stream:
        staged = src_host.array(np.uint8, image.shape)
        staged[:] = image
        cuda.memcpy_htod_async(src.ptr, staged, stream)
        preprocessor.bgr(stream, src.ptr, image.shape[1], image.shape[0], image.shape[1] * 3, dst.ptr, geometry)
        result = out_host.array(dtype, (3, height, width))
        cuda.memcpy_dtoh_async(result, dst.ptr, stream)
        stream.synchronize()
        return np.array(result, dtype=np.float32)


def _pixels(values: np.ndarray, normalizer) -> np.ndarray:
    """Back to 0..255 pixel units (the comparison is made before normalisation)."""
    return (values - normalizer.b[:, None, None]) / normalizer.a[:, None, None]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gpu_letterbox_equals_the_cpu_path_within_one_level(dtype):
    from pipelines.detection import DetectionPipeline

    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], [f"c{i}" for i in range(80)], PreprocessConfig(), DetectionConfig(pad_value=127))
    rng = np.random.default_rng(0)
    images = bikes_frames() + [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), cv2.resize(bikes_frames((120,))[0], (1920, 1080))]
    for image in images:
        cpu = np.zeros((3, 416, 416), np.float32)
        pipeline.preprocess(image, cpu)
        gpu = _gpu_preprocess(pipeline, image, dtype)
        difference = np.abs(_pixels(gpu, pipeline.normalizer) - _pixels(cpu, pipeline.normalizer))
        tolerance = 1.0 + (0.5 if dtype == np.float16 else 0.0)  # fp16 holds 0..1 to ~1/2048 of a level per unit
        assert difference.max() <= tolerance, (image.shape, float(difference.max()))
        assert difference.mean() < 0.1, "off by one level at most, and rarely (cv2 resizes in fixed point)"


def test_gpu_resize_crop_equals_the_cpu_path():
    from daemon.config import ClassificationConfig
    from pipelines.classification import ClassificationPipeline

    preprocess = PreprocessConfig(scale=1.0, mean=(127, 127, 127), std=(128, 128, 128), interpolation="linear")
    pipeline = ClassificationPipeline("input", (224, 224), "logits", [], preprocess, ClassificationConfig(resize_short=256))
    image = cv2.imread(str(asset("media/chelsea.png")))
    cpu = np.zeros((3, 224, 224), np.float32)
    pipeline.preprocess(image, cpu)
    gpu = _gpu_preprocess(pipeline, image, np.float32)
    assert np.abs(_pixels(gpu, pipeline.normalizer) - _pixels(cpu, pipeline.normalizer)).max() <= 1.0


def _nv12(image: np.ndarray) -> np.ndarray:
    """BGR -> NV12 (luma rows, then interleaved chroma rows), as NVDEC hands frames over."""
    height, width = image.shape[:2]
    i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
    u = i420[height : height + height // 4].reshape(height // 2, width // 2)
    v = i420[height + height // 4 :].reshape(height // 2, width // 2)
    return np.concatenate([i420[:height], np.stack([u, v], axis=-1).reshape(height // 2, width)])


def test_one_batched_launch_equals_per_frame_launches_for_mixed_bgr_and_nv12_rows():
    """The pipeline's kernel: one launch over a job table (BGR frames of two sizes and an NV12 frame)
    writes exactly what one launch per frame writes; checks the table's C layout end to end."""
    from daemon import cuda
    from daemon.gpu.preprocess import GpuPreprocessor, Job
    from pipelines.detection import DetectionPipeline

    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], [f"c{i}" for i in range(80)], PreprocessConfig(), DetectionConfig(pad_value=127))
    bikes = bikes_frames((0, 120))
    frames = [("bgr", bikes[0]), ("nv12", _nv12(cv2.resize(bikes[1], (1280, 720)))), ("bgr", cv2.resize(bikes[1], (1920, 1080)))]
    preprocessor = GpuPreprocessor(pipeline.normalizer, pipeline.pad_grey, np.float16)
    row_bytes = 3 * 416 * 416 * 2
    total = sum(image.nbytes for _, image in frames)
    with cuda.PinnedBuffer(total) as src_host, cuda.DeviceBuffer(total) as src, cuda.PinnedBuffer(len(frames) * 72) as table_host, \
            cuda.DeviceBuffer(len(frames) * 72) as table, cuda.DeviceBuffer(row_bytes * 3) as batched, cuda.DeviceBuffer(row_bytes * 3) as single, \
            cuda.PinnedBuffer(row_bytes * 6) as out_host, cuda.Stream() as stream:
        table_bytes = table_host.array(np.uint8, (len(frames) * 72,))
        jobs = (Job * len(frames)).from_address(table_bytes.ctypes.data)
        assert ctypes.sizeof(Job) == 72
        staged, offset = src_host.array(np.uint8, (total,)), 0
        for row, (kind, image) in enumerate(frames):
            staged[offset : offset + image.nbytes] = image.reshape(-1)
            if kind == "bgr":
                jobs[row] = Job.bgr(src.ptr + offset, image.shape[1], image.shape[0], image.shape[1] * 3, pipeline.plan(image.shape)[1])
            else:
                height = image.shape[0] * 2 // 3
                jobs[row] = Job.nv12(src.ptr + offset, src.ptr + offset + image.shape[1] * height, image.shape[1], height, image.shape[1], True,
                                     pipeline.plan((height, image.shape[1], 3))[1])
            offset += image.nbytes
        cuda.memcpy_htod_async(src.ptr, staged, stream)
        cuda.memcpy_htod_async(table.ptr, table_bytes, stream)
        preprocessor.batch(stream, table.ptr, len(frames), batched.ptr, 416, 416)
        for row in range(len(frames)):
            preprocessor.one(stream, jobs[row], single.ptr + row * row_bytes)
        result = out_host.array(np.float16, (2, 3, 3, 416, 416))
        cuda.memcpy_dtoh_async(result[0], batched.ptr, stream)
        cuda.memcpy_dtoh_async(result[1], single.ptr, stream)
        stream.synchronize()
        np.testing.assert_array_equal(result[0], result[1])
        for row, (kind, image) in enumerate(frames):  # and each row is the frame, not padding or another row
            if kind == "bgr":
                cpu = np.zeros((3, 416, 416), np.float32)
                pipeline.preprocess(image, cpu)
                difference = np.abs(_pixels(result[0, row].astype(np.float32), pipeline.normalizer) - _pixels(cpu, pipeline.normalizer))
                assert difference.max() <= 1.5, (row, float(difference.max()))


def test_device_decoding_gives_the_host_decoding_results():
    """The pipeline's torch decoding on the GPU (top candidates as x1, y1, x2, y2, score, class) followed
    by the host's threshold and batched NMS equals decoding the raw output on the host."""
    import torch

    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from pipelines.detection import DetectionPipeline

    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))
    reference = OnnxRuntimeBackend(asset("models/yolov3_tiny_416.onnx"), 4, 1, OnnxRuntimeConfig())
    slot = reference.create_slot(0)
    frames = bikes_frames((100, 120, 160, 200))
    metas = [pipeline.preprocess(image, slot.inputs["images"][row]) for row, image in enumerate(frames)]
    reference.submit(slot, len(frames))
    raw = reference.wait(slot)["output"]
    decoded = pipeline.device_decode(torch.from_numpy(np.ascontiguousarray(raw)).cuda()).cpu().numpy()
    assert decoded.shape == pipeline.reduced_shape(raw.shape)
    on_host = pipeline.postprocess_batch({"output": raw}, metas)
    on_device = pipeline.postprocess_batch({"output": decoded}, metas, decoded=True)
    assert sum(len(r["detections"]) for r in on_host) >= 5
    for want, have in zip(on_host, on_device):
        assert [d["label"] for d in want["detections"]] == [d["label"] for d in have["detections"]]
        for a, b in zip(want["detections"], have["detections"]):
            np.testing.assert_allclose(a["box"], b["box"], atol=0.2)
            assert abs(a["score"] - b["score"]) <= 2e-4
    reference.close()


def test_cuda_graph_replay_equals_eager_execution():
    """The torch backend replays a captured graph per batch size; its outputs equal eager mode's (both
    channels-last; the H200 run of 2026-12-01 against a contiguous eager model differed by 3 fp16 ulps
    in 1 of 1.7 M values, a different convolution kernel, not the graph)."""
    from daemon.backends.torch import torch_backend

    model = asset("models/yolov3_tiny_416.onnx")
    graphs = torch_backend(model, 8, 1, half=True, cuda_graphs=True)
    eager = torch_backend(model, 8, 1, half=True, cuda_graphs=False)  # the same kernels, launched one by one
    graph_slot, eager_slot = graphs.create_slot(0), eager.create_slot(0)
    assert sorted(graph_slot.state.graphs) == [1, 2, 4, 8] and not eager_slot.state.graphs
    assert graphs.info.details["cuda_graphs"] and graphs.info.details["channels_last"]
    rng = np.random.default_rng(1)
    for batch in (8, 3, 1):  # 3 replays the graph of 4
        x = rng.random((batch, 3, 416, 416), dtype=np.float32).astype(np.float16)
        graph_slot.inputs["images"][:batch] = x
        eager_slot.inputs["images"][:batch] = x
        graphs.submit(graph_slot, batch)
        eager.submit(eager_slot, batch)
        np.testing.assert_allclose(graphs.wait(graph_slot)["output"], eager.wait(eager_slot)["output"], rtol=2e-3, atol=2e-3)
    graphs.close()
    eager.close()


def test_a_compiled_model_replays_in_cuda_graphs_and_agrees_with_the_uncompiled_one(tmp_path, monkeypatch):
    """``engine.torch.compile``: the converted model compiled by TorchInductor (its shape-reading modules
    run eagerly between the compiled pieces), captured per batch size like the plain one, and its outputs
    those of the uncompiled model within fp16 rounding (fused kernels round differently), for a full batch,
    a padded one and one frame. Its kernels land in the cache directory it is given."""
    from daemon.backends.torch import torch_backend

    import daemon.backends

    # As if the user had set neither directory (whatever torch has written into the environment since).
    monkeypatch.setattr(daemon.backends, "USER_COMPILER_CACHE_DIRS", {"TORCHINDUCTOR_CACHE_DIR": None, "TRITON_CACHE_DIR": None})
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    model = asset("models/yolov3_tiny_416.onnx")
    compiled = torch_backend(model, 8, 1, half=True, compile_model=True, compile_cache=tmp_path / "inductor")
    plain = torch_backend(model, 8, 1, half=True)
    assert compiled.info.details["compiled"] is True and plain.info.details["compiled"] is False
    compiled_slot, plain_slot = compiled.create_slot(0), plain.create_slot(0)
    assert sorted(compiled_slot.state.graphs) == [1, 2, 4, 8], "every batch size captured"
    rng = np.random.default_rng(2)
    for batch in (8, 3, 1):
        x = rng.random((batch, 3, 416, 416), dtype=np.float32).astype(np.float16)
        compiled_slot.inputs["images"][:batch] = x
        plain_slot.inputs["images"][:batch] = x
        compiled.submit(compiled_slot, batch)
        plain.submit(plain_slot, batch)
        ours, theirs = compiled.wait(compiled_slot)["output"], plain.wait(plain_slot)["output"]
        assert np.abs(ours[..., 4] - theirs[..., 4]).max() < 2e-2, "objectness"
        np.testing.assert_allclose(ours[..., :4], theirs[..., :4], rtol=1e-2, atol=0.5)  # boxes, input pixels
    cached = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "inductor").rglob("*"))[:5]
    default = Path(tempfile.gettempdir())
    assert cached, (f"the compiled kernels are cached where the backend was told (TORCHINDUCTOR_CACHE_DIR="
                    f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR')}, TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR')}; "
                    f"in {default}: {sorted(p.name for p in default.glob('torchinductor*'))})")
    compiled.close()
    plain.close()


def test_a_captured_cuda_graph_replays_a_kernel_on_new_input():
    """daemon.cuda.capture_graph (what the TensorRT executor captures execute_async_v3 with): the
    preprocessing kernel captured once, replayed after the input changed, writes the new frame."""
    from daemon import cuda
    from daemon.gpu.preprocess import GpuPreprocessor
    from pipelines.detection import DetectionPipeline

    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], [f"c{i}" for i in range(80)], PreprocessConfig(), DetectionConfig(pad_value=127))
    first, second = bikes_frames((0, 120))
    preprocessor = GpuPreprocessor(pipeline.normalizer, pipeline.pad_grey, np.float32)
    out_bytes = 3 * 416 * 416 * 4
    with cuda.PinnedBuffer(first.nbytes) as src_host, cuda.DeviceBuffer(first.nbytes) as src, cuda.DeviceBuffer(out_bytes) as dst, \
            cuda.PinnedBuffer(out_bytes) as out_host, cuda.Stream() as stream:
        staged, result = src_host.array(np.uint8, first.shape), out_host.array(np.float32, (3, 416, 416))
        geometry = pipeline.plan(first.shape)[1]
        graph = cuda.capture_graph(stream, lambda: preprocessor.bgr(stream, src.ptr, first.shape[1], first.shape[0], first.shape[1] * 3, dst.ptr, geometry))
        for image in (first, second):
            staged[:] = image
            cuda.memcpy_htod_async(src.ptr, staged, stream)
            graph.launch(stream)
            cuda.memcpy_dtoh_async(result, dst.ptr, stream)
            stream.synchronize()
            cpu = np.zeros((3, 416, 416), np.float32)
            pipeline.preprocess(image, cpu)
            assert np.abs(_pixels(result, pipeline.normalizer) - _pixels(cpu, pipeline.normalizer)).max() <= 1.0
        graph.close()
        def refuse() -> None:
            raise RuntimeError("enqueue refused")

        with pytest.raises(cuda.CudaError, match="capture failed: enqueue refused"):  # the capture is ended cleanly
            cuda.capture_graph(stream, refuse)
        stream.synchronize()  # the stream is usable again


@pytest.mark.parametrize("gpu_preprocessing,device_decoding", [(False, False), (True, False), (True, True)])
def test_torch_backend_agrees_with_the_fp32_onnxruntime_reference(gpu_preprocessing, device_decoding):
    from daemon.backends.base import DeviceWork, GpuPreprocessing
    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from daemon.backends.torch import torch_backend
    from daemon.bench.compare import side_by_side
    from pipelines.detection import DetectionPipeline

    model = asset("models/yolov3_tiny_416.onnx")
    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    reference = OnnxRuntimeBackend(model, 4, 1, OnnxRuntimeConfig())
    backend = torch_backend(model, 4, 2, half=True)
    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))
    work = DeviceWork(
        GpuPreprocessing(pipeline.normalizer, pipeline.pad_grey, 1920 * 1080 * 3) if gpu_preprocessing else None,
        pipeline.device_decoding if device_decoding else None,
    )
    assert backend.configure(work) == work
    assert backend.info.decodes_on_device == device_decoding and backend.info.preprocesses_on_device == gpu_preprocessing
    frames = bikes_frames((100, 120, 160, 200))
    metas, expected, got = side_by_side(reference, reference.create_slot(0), backend, backend.create_slot(0), pipeline, frames)
    matched = total = 0
    for row, meta in enumerate(metas):
        want = pipeline.postprocess(expected, row, meta)["detections"]
        have = pipeline.postprocess(got, row, meta, device_decoding)["detections"]
        for detection in want:
            if detection["score"] < 0.3:
                continue
            total += 1
            best = max((iou(detection["box"], d["box"]) for d in have if d["label"] == detection["label"]), default=0.0)
            matched += best >= 0.9
    assert total >= 5 and matched / total >= 0.9, (matched, total)
    backend.close()
    reference.close()


def test_every_frame_transfer_gives_the_same_outputs_and_phase_times_cover_each_step():
    """Frames decoded into pinned memory reach the kernel by a copy each, one batched copy, or no copy
    (the kernel reads them in place): the same kernels on the same pixels, so the decoded outputs are
    equal bit for bit; ``phase_times`` (the benchmark's per-step GPU time) reports all four steps."""
    from daemon.backends.base import DeviceWork, GpuPreprocessing
    from daemon.backends.torch import torch_backend
    from daemon.pinned import PinnedImagePool
    from pipelines.detection import DetectionPipeline

    model = asset("models/yolov3_tiny_416.onnx")
    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    frames = bikes_frames((100, 120, 160, 200))
    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))
    pool = PinnedImagePool(len(frames), frames[0].shape)
    images = [pool.take() for _ in frames]
    for image, frame in zip(images, frames):
        np.copyto(image, frame)
    outputs, transfers = {}, {}
    for transfer in ("copies", "batched", "mapped"):
        backend = torch_backend(model, 4, 1, half=True, frame_transfer=transfer)
        backend.configure(DeviceWork(GpuPreprocessing(pipeline.normalizer, pipeline.pad_grey, 1920 * 1080 * 3), pipeline.device_decoding))
        transfers[transfer] = backend.info.details["frame_transfer"]
        slot = backend.create_slot(0)
        for row, image in enumerate(images):
            backend.stage(slot, row, image, pipeline)
        backend.submit(slot, len(images))
        outputs[transfer] = {name: array.copy() for name, array in backend.wait(slot).items()}
        for row, image in enumerate(images):
            backend.stage(slot, row, image, pipeline)
        phases = backend.phase_times(slot, len(images))
        assert list(phases) == ["copies", "preprocessing", "model", "outputs"] and all(ms >= 0 for ms in phases.values()), phases
        assert phases["model"] > 0, phases
        again = backend.wait(slot)
        for name in again:
            np.testing.assert_array_equal(again[name], outputs[transfer][name])
        backend.close()
    assert transfers == {"copies": "copies", "batched": "batched", "mapped": "mapped"}, transfers  # CUDA 13: batched is there
    for transfer in ("batched", "mapped"):
        for name in outputs["copies"]:
            np.testing.assert_array_equal(outputs[transfer][name], outputs["copies"][name], err_msg=transfer)
    assert outputs["copies"]["output"][:, 0, 4].max() > 0.3, "real detections, not zeros"
    for image in images:
        image.release()
    pool.close()


def test_the_daemon_serves_bikes_with_the_torch_backend_and_gpu_preprocessing(start_daemon, free_port):
    from daemon.client import ResultSubscriber

    from .conftest import all_ended, collect, detector_config

    config = detector_config(
        f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\n',
        free_port,
        engine='backend = "torch"\nmax_batch = 8\nstreams = 2\npreprocess = "gpu"',
    )
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=90, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    results = [m for m in messages if m.type == "result"]
    assert [m.header["frame"]["index"] for m in results] == list(range(250))
    assert {m.header["model"]["backend"] for m in results} == {"torch"}
    labels = {d["label"] for m in results for d in m.header["detections"]}
    assert {"person", "bicycle"} <= labels
    assert "preprocessing on the GPU" in daemon.stderr


def test_opencv_frames_decoded_beside_the_daemon_reach_gpu_preprocessing_from_page_locked_shared_memory(start_daemon, free_port):
    """``decoder = "opencv"`` with ``decode_process = true`` beside the same file decoded in the daemon, on
    the torch backend with GPU preprocessing: the decoding process's shared memory is page-locked
    (``cudaHostRegister``: no warning) and every frame's detections match the in-daemon camera's (the same
    pixels; boxes within IoU 0.99)."""
    from daemon.client import ResultSubscriber

    from .conftest import all_ended, collect, detector_config

    sources = "".join(f'[[sources]]\nid = "{name}"\nuri = "{asset("media/bikes.mp4")}"\ndecode_process = {flag}\n'
                      for name, flag in (("in", "false"), ("beside", "true")))
    config = detector_config(sources, free_port, engine='backend = "torch"\nmax_batch = 8\nstreams = 2\npreprocess = "gpu"')
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    assert "cannot page-lock" not in daemon.stderr
    by_source = {name: {m.header["frame"]["index"]: m.header["detections"] for m in messages if m.type == "result" and m.source_id == name}
                 for name in ("in", "beside")}
    assert sorted(by_source["beside"]) == sorted(by_source["in"]) == list(range(250))
    for index, expected in by_source["in"].items():
        got = by_source["beside"][index]
        assert [d["label"] for d in got] == [d["label"] for d in expected], f"frame {index}"
        for a, b in zip(got, expected):
            assert iou(a["box"], b["box"]) >= 0.99, f"frame {index}"


def test_the_daemon_serves_an_nvdec_source_straight_from_device_memory(start_daemon, free_port):
    """1080p H.264 decoded by NVDEC into device memory, NV12 kernel into the input tensor: no host copy of
    pixels."""
    from .conftest import serve_nvdec_clip

    _, results = serve_nvdec_clip(start_daemon, free_port, 'backend = "torch"\nmax_batch = 16\nstreams = 2\npreprocess = "gpu"')
    assert {m.header["model"]["backend"] for m in results} == {"torch"}


def test_decoder_auto_picks_nvdec_on_a_gpu_backend(start_daemon, free_port):
    """``decoder = "auto"`` with the torch backend and GPU preprocessing: the clip is decoded by NVDEC (the
    same checks as an explicit ``decoder = "nvdec"``), and the log says so."""
    from .conftest import serve_nvdec_clip

    daemon, _ = serve_nvdec_clip(start_daemon, free_port, 'backend = "torch"\nmax_batch = 16\nstreams = 2\npreprocess = "gpu"', decoder="auto")
    assert "decoder 'auto' decodes with NVDEC" in daemon.stderr


def test_the_daemon_serves_an_http_mpeg_ts_camera_through_nvdec(start_daemon, free_port):
    """A network camera on NVDEC (issue 13, item 1): daemon/bench/tsserver.py serves bikes as MPEG-TS over
    HTTP from its own process; the daemon's demuxer process (PyNvVideoCodec's demuxer on this machine)
    hands the packets over, NVDEC decodes them into device memory, GPU preprocessing reads them there."""
    pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    from daemon.client import ResultSubscriber

    from .conftest import REPO, collect, detector_config
    from .test_http_ts import TsCamera

    clip = REPO / ".cache" / "bikes.ts"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: scripts/gpu-carry makes it")
    camera = TsCamera(clip).start()
    try:
        config = detector_config(
            f'[[sources]]\nid = "ts"\nuri = "{camera.url}"\ndecoder = "nvdec"\n[sources.reconnect]\nopen_timeout_s = 10\nread_timeout_s = 5\n',
            free_port, engine='backend = "torch"\nmax_batch = 8\nstreams = 2\npreprocess = "gpu"',
        ) + "\n[daemon]\nexit_when_sources_end = false\n"  # fmt: skip
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(config)
            messages = collect(subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 60, timeout=120, daemon=daemon)
            daemon.terminate()
            assert daemon.wait(60) == 0, daemon.stderr
    finally:
        camera.stop()
    results = [m for m in messages if m.type == "result"]
    assert {(m.header["frame"]["width"], m.header["frame"]["height"]) for m in results} == {(640, 272)}
    indexes = [m.header["frame"]["index"] for m in results]
    assert indexes == sorted(set(indexes)), "frames in order, none twice"
    assert {"person", "bicycle"} & {d["label"] for m in results for d in m.header["detections"]}


def test_nvdec_frames_reach_another_stream_through_their_ready_event():
    """The NVDEC reader does not wait for the copy of its frame (daemon/gpu/nvdec.py): a consumer stream
    that waits for each frame's ``ready`` event reads exactly the NV12 bytes PyNvVideoCodec decoded (a
    second decoder of the same clip, read back after a device synchronize)."""
    import threading

    nvc = pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    import cupy

    from daemon import cuda
    from daemon.gpu.nvdec import NvdecProducer

    from .conftest import REPO

    clip = REPO / ".cache" / "bikes_1080p30.mp4"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: run scripts/make-test-clips")
    producer = NvdecProducer(str(clip), 3, threading.Event())
    reference_stream, consumer = cuda.Stream(), cuda.Stream()
    reference = nvc.SimpleDecoder(str(clip), gpu_id=0, cuda_context=cuda.primary_context_handle(0), cuda_stream=reference_stream.handle,
                                  use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
    try:
        for index in range(45):
            assert producer.grab(), f"frame {index}"
            image, _ = producer.retrieve()
            consumer.wait_event(image.ready)
            nbytes = image.width * image.height * 3 // 2
            memory = cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(image.y_ptr, nbytes, image), 0)
            got = cupy.ndarray((image.height * 3 // 2, image.width), cupy.uint8, memory).get(stream=cupy.cuda.ExternalStream(consumer.handle))
            image.release()
            (frame,) = reference.get_batch_frames(1)
            cupy.cuda.runtime.deviceSynchronize()
            y, uv = (_pitched_plane_to_host(cupy, plane, image.width) for plane in frame.cuda())
            expected = np.concatenate([y[: image.height], uv[: image.height // 2]])
            assert np.array_equal(got, expected), f"frame {index}: {int((got != expected).sum())} bytes differ"
    finally:
        producer.close()
        for stream in (reference_stream, consumer):
            stream.close()


def _device_nv12_to_host(cupy, image) -> np.ndarray:
    """A DeviceFrame's NV12 bytes (rows of ``width``) on the host, after a device synchronize."""
    cupy.cuda.runtime.deviceSynchronize()
    nbytes = image.width * image.height * 3 // 2
    memory = cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(image.y_ptr, nbytes, image), 0)
    return cupy.ndarray((image.height * 3 // 2, image.width), cupy.uint8, memory).get()


def test_a_decoding_process_hands_over_exactly_what_nvdec_decodes():
    """``decode_process = true`` (daemon/gpu/nvdecproc.py): the child decodes the 1080p30 clip with NVDEC
    and copies each frame into the daemon's memory through CUDA IPC. Every frame the reader takes is the
    NV12 PyNvVideoCodec decodes here (a reference decoder in this process), frames grabbed and not
    retrieved (a full queue skips them) give their slot back at once, a pool smaller than the clip is
    recycled, the end is an end, and after a rewind the first frame comes again."""
    nvc = pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    import cupy

    from daemon import cuda
    from daemon.gpu.nvdecproc import NvdecProcessProducer

    from .conftest import REPO, read_through_a_small_pool

    clip = REPO / ".cache" / "bikes_1080p30.mp4"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: run scripts/make-test-clips")
    producer = NvdecProcessProducer(str(clip), stream=False, slots=3, open_timeout_s=10, read_timeout_s=10)
    reference_stream = cuda.Stream()
    reference = nvc.SimpleDecoder(str(clip), gpu_id=0, cuda_context=cuda.primary_context_handle(0), cuda_stream=reference_stream.handle,
                                  use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)

    def reference_frame() -> np.ndarray:
        (frame,) = reference.get_batch_frames(1)
        cupy.cuda.runtime.deviceSynchronize()
        y, uv = (_pitched_plane_to_host(cupy, plane, 1920) for plane in frame.cuda())
        return np.concatenate([y[:1080], uv[:540]])

    try:
        assert producer.fps and abs(producer.fps - 30) < 0.1
        compared = []

        def check(index, image, pts, expected):
            assert (image.width, image.height, image.ready) == (1920, 1080, None)
            assert pts == pytest.approx(index * 1000 / 30, abs=0.01)
            if index % 10 == 0 or index > 290:
                got = _device_nv12_to_host(cupy, image)
                assert np.array_equal(got, expected), f"frame {index}: {int((got != expected).sum())} bytes differ"
                compared.append(index)

        # frames grabbed and never retrieved give their slot back, or the 3-slot pool would run dry
        read_through_a_small_pool(producer, 300, lambda index: index % 7 == 3, check, on_grab=lambda index: reference_frame())
        assert len(compared) >= 30
        assert not producer.grab(), "the clip's end"
        assert producer.rewind()
        assert producer.grab()
        image, pts = producer.retrieve()
        reference.seek_to_index(0)
        assert pts == 0 and np.array_equal(_device_nv12_to_host(cupy, image), reference_frame()), "the first frame again"
        image.release()
    finally:
        producer.close()
        reference_stream.close()


def test_the_daemon_serves_an_nvdec_source_decoded_in_a_process_of_its_own(start_daemon, free_port):
    """The same checks as the in-daemon NVDEC source (every frame in order, boxes in the frame), with the
    clip decoded in its decoding process: the frames reach GPU preprocessing through CUDA IPC."""
    from .conftest import serve_nvdec_clip

    daemon, results = serve_nvdec_clip(start_daemon, free_port, 'backend = "torch"\nmax_batch = 16\nstreams = 2\npreprocess = "gpu"',
                                       source="decode_process = true\n")
    assert {m.header["model"]["backend"] for m in results} == {"torch"}


def test_http_cameras_decoded_in_a_shared_process_come_back_after_that_process_is_killed(start_daemon, free_port):
    """Two network cameras with ``decode_process = true``: each demuxed by a process of its own and decoded
    by NVDEC in one decoding process they share (one CUDA context). SIGKILL of that process mid-stream is
    both cameras gone: their readers reconnect with their backoff (to a new decoding process), the results
    go on, each camera's in order, none twice, and the daemon exits cleanly at SIGTERM."""
    pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    import os
    import signal
    import time

    from daemon.client import ResultSubscriber

    from .conftest import REPO, child_processes, collect, detector_config
    from .test_http_ts import TsCamera

    clip = REPO / ".cache" / "bikes.ts"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: scripts/gpu-carry makes it")

    def decoding_children(pid: int) -> list[int]:
        return child_processes(pid, b"daemon.gpu.nvdecchild")

    camera = TsCamera(clip).start()
    try:
        sources = "".join(
            f'[[sources]]\nid = "{name}"\nuri = "{camera.url}"\ndecoder = "nvdec"\ndecode_process = true\n'
            '[sources.reconnect]\nopen_timeout_s = 10\nread_timeout_s = 5\ninitial_delay_s = 0.2\n' for name in ("ts", "ts2"))
        config = detector_config(sources, free_port, engine='backend = "torch"\nmax_batch = 8\nstreams = 2\npreprocess = "gpu"',
                                 ) + "\n[daemon]\nexit_when_sources_end = false\n"  # fmt: skip
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(config)
            first = collect(subscriber, lambda ms: {m.source_id for m in ms if m.type == "result"} == {"ts", "ts2"}
                            and sum(m.type == "result" for m in ms) >= 60, timeout=120, daemon=daemon)
            (child,) = decoding_children(daemon.process.pid)  # one process for both
            os.kill(child, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and child in decoding_children(daemon.process.pid):
                time.sleep(0.05)
            later = collect(subscriber, lambda ms: {m.source_id for m in ms if m.type == "result"} == {"ts", "ts2"}
                            and sum(m.type == "result" for m in ms) >= 60, timeout=120, daemon=daemon)
            replacement = decoding_children(daemon.process.pid)
            daemon.terminate()
            assert daemon.wait(60) == 0, daemon.stderr
    finally:
        camera.stop()
    assert len(replacement) == 1 and child not in replacement, "one new decoding process for both"
    results = [m for m in first + later if m.type == "result"]
    for name in ("ts", "ts2"):
        indexes = [m.header["frame"]["index"] for m in results if m.source_id == name]
        assert indexes == sorted(set(indexes)), f"{name}: frames in order, none twice"
    assert {(m.header["frame"]["width"], m.header["frame"]["height"]) for m in results} == {(640, 272)}
    assert {"person", "bicycle"} & {d["label"] for m in results for d in m.header["detections"]}


def _pitched_plane_to_host(cupy, plane, width: int) -> np.ndarray:
    """A decoder plane (its ``__cuda_array_interface__``: rows of ``pitch`` bytes) as ``rows x width`` bytes
    on the host; cupy.asarray refuses PyNvVideoCodec's interface, whose shape is a list."""
    interface = plane.__cuda_array_interface__
    rows = int(interface["shape"][0])
    pitch = int(interface["strides"][0]) if interface.get("strides") else width
    memory = cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(int(interface["data"][0]), rows * pitch, plane), 0)
    return cupy.ndarray((rows, pitch), cupy.uint8, memory).get()[:, :width]


def test_enqueues_that_hold_the_gil_give_the_outputs_of_those_that_release_it():
    """``engine.hold_gil_for_enqueues``: the same batch queued through libcuda with the GIL held (copies,
    kernel launches, the model's graph launched from torch's instantiated graph, the event) and through
    cuda-bindings, which releases it: bit-identical outputs, and the runtime says which ran."""
    from daemon.backends.base import DeviceWork, GpuPreprocessing
    from daemon.backends.torch import torch_backend
    from daemon.pinned import PinnedImagePool
    from pipelines.detection import DetectionPipeline

    model = asset("models/yolov3_tiny_416.onnx")
    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    frames = bikes_frames((100, 160, 200))
    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))
    pool = PinnedImagePool(len(frames), frames[0].shape)
    images = [pool.take() for _ in frames]
    for image, frame in zip(images, frames):
        np.copyto(image, frame)
    outputs, enqueues = {}, {}
    for hold in (True, False):
        backend = torch_backend(model, 4, 1, half=True, hold_gil=hold)
        backend.configure(DeviceWork(GpuPreprocessing(pipeline.normalizer, pipeline.pad_grey, 1920 * 1080 * 3), pipeline.device_decoding))
        enqueues[hold] = backend.info.details["enqueues"]
        slot = backend.create_slot(0)
        for _ in range(3):  # the same slot again: the event and the graph launch are reused
            for row, image in enumerate(images):
                backend.stage(slot, row, image, pipeline)
            backend.submit(slot, len(images))
            result = {name: array.copy() for name, array in backend.wait(slot).items()}
            if hold in outputs:
                for name in result:
                    np.testing.assert_array_equal(result[name], outputs[hold][name])
            outputs[hold] = result
        assert backend.info.details["cuda_graphs"] is True
        backend.close()
    assert enqueues == {True: "hold the GIL", False: "release the GIL"}, enqueues
    for name in outputs[False]:
        np.testing.assert_array_equal(outputs[True][name], outputs[False][name])
    assert outputs[True]["output"][:, 0, 4].max() > 0.3, "real detections, not zeros"
    for image in images:
        image.release()
    pool.close()


def test_the_live_view_downloads_nvdec_frames_byte_for_byte_and_draws_them():
    """daemon/view/hub.py on real NVDEC frames: what it downloads for a watched source is the frame's NV12
    bytes in device memory, exactly; its picture is that frame in BGR (against OpenCV's FFmpeg decoding
    of the same clip, within JPEG and colour-conversion error)."""
    import threading

    pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    import cupy

    from daemon.entities import Frame, FrameResult
    from daemon.gpu.nvdec import NvdecProducer
    from daemon.opsconfig import ViewConfig
    from daemon.view.hub import ViewHub

    from .conftest import REPO

    clip = REPO / ".cache" / "bikes_1080p30.mp4"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: run scripts/make-test-clips")
    hub = ViewHub(ViewConfig(enabled=True, width=1920, fps=60, jpeg_quality=95))
    hub.start()
    producer = NvdecProducer(str(clip), 3, threading.Event())
    reference = cv2.VideoCapture(str(clip))
    try:
        with hub.watch("cam"):
            for index in range(3):
                assert producer.grab(), f"frame {index}"
                image, _ = producer.retrieve()
                if image.ready is not None:  # the reader's copy out of the decoder's surface is done
                    image.ready.synchronize()
                frame = Frame("cam", index, None, image, 0.0, 0.0)
                captured = hub.capture([frame])
                rows = captured[id(frame)].rows[:, : image.width]
                y = cupy.ndarray((image.height, image.pitch), cupy.uint8,
                                 cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(image.y_ptr, image.height * image.pitch, image), 0)).get()
                uv = cupy.ndarray((image.height // 2, image.pitch), cupy.uint8,
                                  cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(image.uv_ptr, image.height // 2 * image.pitch, image), 0)).get()
                assert np.array_equal(rows, np.concatenate([y, uv])[:, : image.width]), f"frame {index}"
                hub.offer([FrameResult(frame, {"detections": []}, 0.0, 0.0, 1)], captured)
                picture = hub.next_picture("cam", index, 10.0)
                image.release()
                assert picture is not None and (picture.width, picture.height) == (image.width, image.height)
                drawn = cv2.imdecode(np.frombuffer(picture.jpeg, np.uint8), cv2.IMREAD_COLOR)
                ok, expected = reference.read()
                assert ok and np.abs(drawn.astype(int) - expected).mean() < 6, f"frame {index}"
    finally:
        producer.close()
        hub.stop()
