"""GPU tests of the TensorRT path on the GPU TensorRT double (``tests/doubles/gpu_tensorrt.py``).

TensorRT itself cannot be installed where these run. The double stands in for TensorRT's builder and kernels
(the model runs in torch), and everything around them is real: trtstream's TensorRT adapter, its device
buffers, shapes, streams, events, the raw stream capture of ``execute_async_v3`` into CUDA graphs, GPU
preprocessing, NVDEC and the daemon. So these tests prove that path on a GPU, never that TensorRT builds or
runs a model. Marker ``gpu``; skipped (with the reason) without an NVIDIA GPU, torch or onnx2torch.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from daemon.bench.compare import iou
from daemon.netaddr import free_loopback_port
from daemon.config import DetectionConfig, EngineConfig, ModelConfig, OnnxRuntimeConfig, PreprocessConfig, TensorRTConfig

from .conftest import asset, bikes_frames, gpu_marks
from .doubles.gpu_tensorrt import WARNING_LINE, shim_environment



def _torch_reason() -> str | None:
    for name in ("torch", "onnx2torch"):
        if importlib.util.find_spec(name) is None:
            return f"the GPU TensorRT double runs the model in torch: needs {name} (pip install torch onnx2torch)"
    return None


pytestmark = [
    *gpu_marks(),
    pytest.mark.skipif(_torch_reason() is not None, reason=str(_torch_reason())),
]

MODEL = "models/yolov3_tiny_416.onnx"
SCORE_THRESHOLD = 0.3  # DetectionConfig's default, which detector_config keeps
NMS_IOU = 0.45


def _pipeline():
    from pipelines.detection import DetectionPipeline

    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    return DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))


def _built(tmp_path, version: str, precision: str, max_batch: int, streams: int):
    """A TensorRTBuilder on a fresh GPU double, its plan built from the real model; (double, builder, plan)."""
    from daemon.backends.tensorrt import TensorRTBuilder

    from .doubles.gpu_tensorrt import GpuTensorRT

    model = asset(MODEL)
    double = GpuTensorRT(version)
    engine = EngineConfig(max_batch=max_batch, streams=streams, tensorrt=TensorRTConfig(precision=precision))
    builder = TensorRTBuilder(ModelConfig(path=model, pipeline="detection"), engine, trt=double.module)
    plan = tmp_path / "yolov3_tiny.engine"
    builder.build(model, plan, None, lambda fraction, message: None)
    return double, builder, plan


# -- the daemon on the double ------------------------------------------------------------------------------



def _serve_bikes(start_daemon, port: int, engine: str, name: str, env: dict[str, str] | None = None):
    """bikes.mp4 through a daemon with this [engine]; (results in order, the daemon's stderr)."""
    from daemon.client import ResultSubscriber

    from .conftest import all_ended, collect, detector_config

    config = detector_config(f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\n', port, engine=engine)
    with ResultSubscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        daemon = start_daemon(config, name=name, env=env)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    return [m for m in messages if m.type == "result"], daemon.stderr


def _same_box(a, b) -> bool:
    """IoU >= 0.99, or every coordinate within 0.25 px: messages round boxes to 0.1 px, so two boxes a
    thousandth of a pixel apart can come out 0.1 px apart on two sides, and bikes.mp4 has 10 px boxes,
    whose IoU that alone takes to 0.98."""
    return iou(a, b) >= 0.99 or max(abs(x - y) for x, y in zip(a, b)) <= 0.25


def _match(have: list[dict], want: list[dict]) -> tuple[list[tuple[dict, dict]], list[dict], list[dict]]:
    """Detections of one frame paired one to one (same label, the same box; best IoU first); returns the
    pairs and what is left of each side."""
    candidates = sorted(
        ((iou(a["box"], b["box"]), i, j) for i, a in enumerate(have) for j, b in enumerate(want) if a["label"] == b["label"] and _same_box(a["box"], b["box"])),
        reverse=True,
    )
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((have[i], want[j]))
    return pairs, [a for i, a in enumerate(have) if i not in used_a], [b for j, b in enumerate(want) if j not in used_b]


# Both daemons run with TF32 off: cuDNN honours NVIDIA_TF32_OVERRIDE=0, so their FP32 convolutions are FP32.
PURE_FP32 = {"NVIDIA_TF32_OVERRIDE": "0"}
SCORE_TOLERANCE = 0.005  # matched detections' scores; also the band around the threshold for a borderline one


def _assert_same_detections(have_results, want_results) -> None:
    """Frame by frame, the same detections: label, box (:func:`_same_box`), score within SCORE_TOLERANCE.

    The tolerance, and why there is one: both runs compute the same FP32 model with the same weights in
    torch on the same preprocessed input, but the daemon batches frames by timing (two streams,
    max_wait_ms), so a frame sits in batches of different sizes in the two runs, and cuDNN picks its
    convolution algorithm (summation order, Winograd or not) per shape and memory layout: outputs differ in
    the last bits of FP32. So scores may differ in their fourth decimal (messages round to four), and a
    detection may be on one side only when it is borderline, scoring within SCORE_TOLERANCE of the
    threshold: at most 2 of them (bikes.mp4 has ~8 of its ~380 detections within 0.005 of 0.3)."""
    have = {m.header["frame"]["index"]: m.header["detections"] for m in have_results}
    want = {m.header["frame"]["index"]: m.header["detections"] for m in want_results}
    assert sorted(have) == sorted(want)
    total = sum(len(d) for d in want.values())
    unmatched, problems = 0, []
    for index in sorted(want):
        pairs, only_have, only_want = _match(have[index], want[index])
        for a, b in pairs:
            if abs(a["score"] - b["score"]) > SCORE_TOLERANCE:
                problems.append(f"frame {index}: {a['label']} scores {a['score']} vs {b['score']}")
        for side, left in (("tensorrt only", only_have), ("torch only", only_want)):
            for detection in left:
                unmatched += 1
                if detection["score"] >= SCORE_THRESHOLD + SCORE_TOLERANCE:
                    problems.append(f"frame {index}: {side}: {detection}")
    assert not problems, "\n".join(problems[:20])
    assert total >= 100 and unmatched <= 2, (unmatched, total)


@pytest.mark.timeout(420)
def test_the_daemon_serves_bikes_with_tensorrt_on_the_gpu_double_as_the_torch_backend_does(start_daemon, free_port):
    """engine.backend = "tensorrt" in a daemon subprocess that imports the double as ``tensorrt``: the engine
    is built into the cache, loaded, its execute_async_v3 captured per slot and batch size, fed by GPU
    preprocessing; then the same video through the torch backend, in FP32 as the double runs this FP32
    model on TensorRT 11 (strongly typed), both without TF32."""
    common = 'max_batch = 8\nstreams = 2\npreprocess = "gpu"\non_missing_engine = "wait"'
    trt_results, stderr = _serve_bikes(
        start_daemon, free_port, f'backend = "tensorrt"\n{common}\n[engine.tensorrt]\nprecision = "fp32"', "tensorrt.toml",
        env={**shim_environment(), **PURE_FP32},
    )
    assert WARNING_LINE in stderr, "the double announces itself"
    assert [m.header["frame"]["index"] for m in trt_results] == list(range(250))
    assert {m.header["model"]["backend"] for m in trt_results} == {"tensorrt"}
    labels = {d["label"] for m in trt_results for d in m.header["detections"]}
    assert {"person", "bicycle"} <= labels, labels
    assert "preprocessing on the GPU" in stderr
    assert "CUDA graph capture failed" not in stderr, "execute_async_v3 on the double must be capturable"

    torch_results, torch_stderr = _serve_bikes(
        start_daemon, free_loopback_port(), f'backend = "torch"\n{common}\n[engine.torch]\nhalf = false', "torch.toml", env=PURE_FP32
    )
    assert WARNING_LINE not in torch_stderr
    assert [m.header["frame"]["index"] for m in torch_results] == list(range(250))
    assert {m.header["model"]["backend"] for m in torch_results} == {"torch"}
    _assert_same_detections(trt_results, torch_results)


def test_the_daemon_serves_an_nvdec_source_with_tensorrt_on_the_gpu_double(start_daemon, free_port):
    """NVDEC frames in device memory, the NV12 kernel into the engine's input buffer, the double's
    execute_async_v3 reading it there."""
    from .conftest import serve_nvdec_clip

    engine = 'backend = "tensorrt"\nmax_batch = 16\nstreams = 2\npreprocess = "gpu"\non_missing_engine = "wait"'
    daemon, results = serve_nvdec_clip(start_daemon, free_port, engine, env=shim_environment())
    assert WARNING_LINE in daemon.stderr
    assert {m.header["model"]["backend"] for m in results} == {"tensorrt"}


# -- the adapter on the double, in process ---------------------------------------------------------------


@pytest.mark.parametrize("version, precision", [("11.1", "fp32"), ("10.16", "fp16")])
def test_the_tensorrt_adapter_on_the_gpu_double_agrees_with_the_fp32_onnxruntime_reference(tmp_path, caplog, version, precision):
    """TensorRTBuilder.build/load on the double (11.1: strongly typed, the FP32 ONNX runs in FP32; 10.16 with
    precision fp16: BuilderFlag.FP16, the double computes in fp16), batches of 4 and 2 preprocessed on the
    CPU into the slot, against ONNX Runtime on the same input."""
    from daemon.backends.onnxruntime import OnnxRuntimeBackend

    double, builder, plan = _built(tmp_path, version, precision, max_batch=4, streams=2)
    built = double.plans[-1]
    assert built["onnx"] == str(asset(MODEL).resolve())
    assert ("FP16" in built["flags"]) is (version == "10.16")
    assert [(t["name"], t["shape"], t["dtype"]) for t in built["inputs"]] == [("images", [-1, 3, 416, 416], "FLOAT")]
    assert [(t["name"], t["shape"], t["dtype"]) for t in built["outputs"]] == [("output", [-1, 2535, 85], "FLOAT")]
    with caplog.at_level(logging.WARNING):
        backend = builder.load(plan)
        slot = backend.create_slot(0)
    assert backend.info.name == "tensorrt" and backend.info.version == double.module.__version__
    assert "CUDA graph capture failed" not in caplog.text  # where the runtime captures execute_async_v3
    reference = OnnxRuntimeBackend(asset(MODEL), 4, 1, OnnxRuntimeConfig())
    ref_slot = reference.create_slot(0)
    pipeline = _pipeline()
    matched = total = 0
    for frames in (bikes_frames((100, 120, 160, 200)), bikes_frames((60, 220))):
        metas = []
        for row, image in enumerate(frames):
            metas.append(pipeline.preprocess(image, ref_slot.inputs["images"][row]))
            pipeline.preprocess(image, slot.inputs["images"][row])
        reference.submit(ref_slot, len(frames))
        backend.submit(slot, len(frames))
        expected, got = reference.wait(ref_slot), backend.wait(slot)
        assert got["output"].shape == (len(frames), 2535, 85)
        for row, meta in enumerate(metas):
            want = pipeline.postprocess(expected, row, meta)["detections"]
            have = pipeline.postprocess(got, row, meta)["detections"]
            for detection in want:
                if detection["score"] < 0.3:
                    continue
                total += 1
                best = max((iou(detection["box"], d["box"]) for d in have if d["label"] == detection["label"]), default=0.0)
                matched += best >= 0.9
    assert total >= 5 and matched / total >= 0.9, (matched, total)
    assert double.executor.executions > 0
    assert not [line for line in double.log_lines if line[0] == "ERROR"], double.log_lines
    backend.close()
    reference.close()


# -- the double itself ----------------------------------------------------------------------------------------


def test_a_raw_stream_capture_of_the_double_s_execute_replays_on_new_input(tmp_path):
    """What the GPU runtime does with a TensorRT engine: one plain execute_async_v3, then the same call
    captured with cudaStreamBeginCapture (thread-local mode) on our own stream. Replayed after the input
    buffer changed, the graph gives what a plain execute on the new input gives; and torch memory taken on
    the same stream after the capture, outside the double, is never written by the replay (the double's
    allocations come from its context's own pool)."""
    import torch
    from cuda.bindings import runtime as cudart

    from daemon import cuda
    from daemon.backends.tensorrt import TrtLogger
    from daemon.cuda import cuda_call

    double, _, plan = _built(tmp_path, "11.1", "fp32", max_batch=2, streams=1)
    trt = double.module
    logger = TrtLogger.create(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None, logger.describe_errors()
    context = engine.create_execution_context()
    pipeline = _pipeline()
    first, second = bikes_frames((0, 60)), bikes_frames((120, 200))
    in_bytes, out_bytes = 2 * 3 * 416 * 416 * 4, 2 * 2535 * 85 * 4
    with cuda.Stream() as stream, cuda.DeviceBuffer(in_bytes) as x, cuda.DeviceBuffer(out_bytes) as y_graph, \
            cuda.DeviceBuffer(out_bytes) as y_eager, cuda.PinnedBuffer(in_bytes) as x_host, cuda.PinnedBuffer(3 * out_bytes) as y_host:
        staged = x_host.array(np.float32, (2, 3, 416, 416))
        outputs = y_host.array(np.float32, (3, 2, 2535, 85))  # first input, graph on the second, eager on the second

        def upload(frames) -> None:
            for row, image in enumerate(frames):
                pipeline.preprocess(image, staged[row])
            cuda.memcpy_htod_async(x.ptr, staged, stream)

        assert context.set_input_shape("images", (2, 3, 416, 416))
        assert context.set_tensor_address("images", x.ptr) and context.set_tensor_address("output", y_graph.ptr)
        upload(first)
        assert context.execute_async_v3(stream.handle), logger.describe_errors()  # the plain enqueue first
        cuda.memcpy_dtoh_async(outputs[0], y_graph.ptr, stream)
        stream.synchronize()

        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(cudart.cudaStreamBeginCapture(stream.raw, mode), "cudaStreamBeginCapture")
        try:
            captured = context.execute_async_v3(stream.handle)
        finally:
            graph = cuda_call(cudart.cudaStreamEndCapture(stream.raw), "cudaStreamEndCapture")
        assert captured, logger.describe_errors()
        graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        try:
            with torch.cuda.stream(torch.cuda.ExternalStream(stream.handle)):  # ordinary torch memory, same stream
                others = [torch.full((n,), 7.0, device="cuda") for n in [1 << 20] * 16 + [6 << 20] * 4]
            upload(second)
            cuda_call(cudart.cudaGraphLaunch(graph_exec, stream.raw), "cudaGraphLaunch")
            cuda.memcpy_dtoh_async(outputs[1], y_graph.ptr, stream)
            stream.synchronize()
            assert all(bool((t == 7.0).all()) for t in others), "the replay wrote into memory it does not own"
        finally:
            cuda_call(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
            cuda_call(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

        assert context.set_tensor_address("output", y_eager.ptr)
        assert context.execute_async_v3(stream.handle), logger.describe_errors()
        cuda.memcpy_dtoh_async(outputs[2], y_eager.ptr, stream)
        stream.synchronize()
        assert double.executor.executions == 3
        np.testing.assert_allclose(outputs[1], outputs[2], rtol=1e-4, atol=1e-3)
        assert np.abs(outputs[0] - outputs[2]).max() > 1.0, "the replay computed on the new input, not the captured one"
