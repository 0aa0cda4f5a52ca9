"""GPU tests of the NVRTC decoding kernel (daemon/gpu/decode.py): against the torch decoding it replaces
(``DetectionPipeline.device_decode``), against a numpy statement of the contract (ties to the lower
anchor, fewer anchors than candidates, no classes), against host decoding on real YOLOv3-tiny outputs,
and replayed from a CUDA graph. Marker ``gpu``; skipped (with the reason) on machines without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.config import DetectionConfig, OnnxRuntimeConfig, PreprocessConfig

from .conftest import asset, gpu_marks



pytestmark = gpu_marks()

OBJECTNESS, ANCHORS_LAST = "yolo_objectness", "yolo_anchors_last"


def _kernel(layout: str, raw: np.ndarray, candidates: int = 128, offset: int = 0) -> np.ndarray:
    """``raw`` through the kernel: up (``offset`` bytes into a device buffer), one launch, down (the
    output pre-filled with NaN)."""
    from cuda.bindings import runtime

    from daemon import cuda
    from daemon.gpu.decode import DetectionDecoder

    decoder = DetectionDecoder(layout, (-1, *raw.shape[1:]), candidates, raw.dtype)
    shape, out_bytes = decoder.output_shape(len(raw)), decoder.output_bytes(len(raw))
    with cuda.PinnedBuffer(raw.nbytes) as up, cuda.DeviceBuffer(raw.nbytes + offset) as src, cuda.DeviceBuffer(out_bytes) as dst, \
            cuda.PinnedBuffer(out_bytes) as down, cuda.Stream() as stream:  # fmt: skip
        staged = up.array(raw.dtype, raw.shape)
        staged[:] = raw
        cuda.memcpy_htod_async(src.ptr + offset, staged, stream)
        cuda.cuda_call(runtime.cudaMemsetAsync(dst.ptr, 0xFF, out_bytes, stream.raw), "cudaMemsetAsync")
        decoder.launch(stream, src.ptr + offset, dst.ptr, len(raw))
        result = down.array(np.float32, shape)
        cuda.memcpy_dtoh_async(result, dst.ptr, stream)
        stream.synchronize()
        return np.array(result)


def _pipeline(layout: str, raw_shape, candidates: int = 128):
    from pipelines.detection import DetectionPipeline

    pipeline = DetectionPipeline("images", (640, 640), "output", [1, *raw_shape[1:]], [], PreprocessConfig(), DetectionConfig(layout=layout))
    pipeline.device_candidates = candidates
    return pipeline


def _torch(layout: str, raw: np.ndarray, candidates: int = 128) -> np.ndarray:
    """The torch decoding on the GPU, of the values upcast to float32 (the kernel computes in float32)."""
    import torch

    pipeline = _pipeline(layout, raw.shape, candidates)
    decoded = pipeline.device_decode(torch.from_numpy(raw.astype(np.float32)).cuda()).cpu().numpy()
    assert decoded.shape == pipeline.reduced_shape(raw.shape)
    return decoded


def _contract(layout: str, raw: np.ndarray, candidates: int = 128) -> np.ndarray:
    """The contract in numpy: float32 scores, K best anchors per image, best first, ties to the lower anchor."""
    x = raw.astype(np.float32)
    rows = x if layout == OBJECTNESS else x.transpose(0, 2, 1)
    class_scores = rows[..., 5:] * rows[..., 4:5] if layout == OBJECTNESS else rows[..., 4:]
    if class_scores.shape[-1]:
        classes = class_scores.argmax(-1)
        scores = np.take_along_axis(class_scores, classes[..., None], -1)[..., 0]
    else:
        classes, scores = np.zeros(rows.shape[:2], np.int64), np.zeros(rows.shape[:2], np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(candidates, rows.shape[1])]
    cxcywh = np.take_along_axis(rows[..., :4], order[..., None], 1)
    half = cxcywh[..., 2:] / 2
    picked = [np.take_along_axis(a, order, 1)[..., None].astype(np.float32) for a in (scores, classes)]
    return np.concatenate([cxcywh[..., :2] - half, cxcywh[..., :2] + half, *picked], axis=-1)


def _assert_same(have: np.ndarray, want: np.ndarray) -> None:
    assert have.shape == want.shape
    np.testing.assert_array_equal(have[..., 5], want[..., 5])  # classes (and with them the order)
    np.testing.assert_allclose(have[..., 4], want[..., 4], rtol=1e-6, atol=0)
    np.testing.assert_allclose(have[..., :4], want[..., :4], rtol=1e-6, atol=1e-4)


def _random_output(layout: str, batch: int, anchors: int, classes: int, dtype, seed: int = 0) -> np.ndarray:
    """Random outputs whose scores are distinct within each image (so every decoder agrees on the order):
    each anchor's best class holds a value no other anchor's has; its other classes are below it."""
    rng = np.random.default_rng(seed)
    half = np.dtype(dtype) == np.float16
    images = []
    for _ in range(batch):
        if half:  # distinct positive normal float16 values (30720 of them)
            peaks = rng.choice(np.arange(0x0400, 0x7C00, dtype=np.uint16), anchors, replace=False).view(np.float16).astype(np.float32)
        else:
            peaks = ((rng.permutation(anchors) + 0.25 + 0.5 * rng.random(anchors)) / anchors).astype(np.float32)
        values = (peaks[:, None] * rng.uniform(0, 0.9, (anchors, classes))).astype(dtype)
        values[np.arange(anchors), rng.integers(0, classes, anchors)] = peaks.astype(dtype)
        boxes = np.column_stack([rng.uniform(0, 640, (anchors, 2)), rng.uniform(1, 200, (anchors, 2))]).astype(dtype)
        if layout == ANCHORS_LAST:
            images.append(np.concatenate([boxes, values], axis=1).T)
            continue
        objectness = rng.uniform(0.5, 1, anchors).astype(dtype)
        while True:  # products are distinct too: redraw the objectness of any that collide
            scores = objectness.astype(np.float32) * peaks
            _, first, counts = np.unique(scores, return_index=True, return_counts=True)
            clash = np.setdiff1d(np.arange(anchors), first[counts == 1])
            if not len(clash):
                break
            objectness[clash] = rng.uniform(0.5, 1, len(clash)).astype(dtype)
        images.append(np.concatenate([boxes, objectness[:, None], values], axis=1))
    return np.ascontiguousarray(np.stack(images))


SHAPES = [  # layout, anchors, classes
    (OBJECTNESS, 2535, 80),  # YOLOv3-tiny at 416
    (OBJECTNESS, 25200, 80),  # YOLOv5 at 640: three chunks of shared memory
    (ANCHORS_LAST, 8400, 80),  # YOLOv8 at 640: read four anchors at a time
    (ANCHORS_LAST, 3549, 80),  # YOLOv8 at 416: an odd count, one anchor at a time
    (ANCHORS_LAST, 9302, 3),  # just over one chunk, one anchor at a time
]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout,anchors,classes", SHAPES)
def test_the_kernel_equals_the_torch_decoding(layout, anchors, classes, dtype, batch):
    raw = _random_output(layout, batch, anchors, classes, dtype, seed=batch)
    have = _kernel(layout, raw)
    _assert_same(have, _torch(layout, raw))
    _assert_same(have, _contract(layout, raw))


@pytest.mark.parametrize("candidates", [1, 128, 1000, 1024])
@pytest.mark.parametrize("layout,anchors,classes", [(OBJECTNESS, 10647, 80), (ANCHORS_LAST, 8400, 80)])
def test_ties_go_to_the_lower_anchor_index(layout, anchors, classes, candidates):
    """Scores of a few levels only (many exact ties, across chunk boundaries too), fp16 as TensorRT gives."""
    rng = np.random.default_rng(candidates)
    shape = (3, anchors, 5 + classes) if layout == OBJECTNESS else (3, 4 + classes, anchors)
    raw = rng.choice(np.array([0.0, 0.25, 0.5, 1.0], np.float16), shape)
    if layout == OBJECTNESS:
        raw[..., :4] = rng.uniform(0, 640, (3, anchors, 4))
    else:
        raw[:, :4] = rng.uniform(0, 640, (3, 4, anchors))
    raw[2] = 0  # one image of nothing but ties (and -0.0 is +0.0)
    raw[2, ..., :7] = -0.0
    have = _kernel(layout, raw, candidates)
    _assert_same(have, _contract(layout, raw, candidates))


@pytest.mark.parametrize(
    "layout,shape", [(ANCHORS_LAST, (2, 4, 50)), (ANCHORS_LAST, (2, 6, 1)), (OBJECTNESS, (3, 7, 8)), (OBJECTNESS, (1, 3000, 5))]
)
def test_fewer_anchors_than_candidates_and_no_classes(layout, shape):
    """K = min(candidates, anchors); with no class scores every score is 0 and the order the anchors'."""
    raw = np.random.default_rng(7).uniform(0, 1, shape).astype(np.float32)
    have = _kernel(layout, raw)
    anchors = shape[1] if layout == OBJECTNESS else shape[2]
    assert have.shape == (shape[0], min(128, anchors), 6)
    _assert_same(have, _contract(layout, raw))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_an_unaligned_output_is_read_one_anchor_at_a_time(dtype):
    """Four anchors a load needs a 16-byte aligned source; any other address takes the scalar loop."""
    raw = _random_output(ANCHORS_LAST, 2, 8400, 80, dtype, seed=3)
    want = _contract(ANCHORS_LAST, raw)
    for offset in (4, 8):
        _assert_same(_kernel(ANCHORS_LAST, raw, offset=offset), want)


def test_a_captured_graph_replays_the_decoding_of_new_outputs():
    """The launch is capturable (no allocation, no synchronisation): replays decode what is in the buffer."""
    from daemon import cuda
    from daemon.gpu.decode import DetectionDecoder

    first, second = (_random_output(ANCHORS_LAST, 4, 8400, 80, np.float16, seed=s) for s in (11, 12))
    decoder = DetectionDecoder(ANCHORS_LAST, (-1, 84, 8400), 128, np.float16)
    out_bytes = decoder.output_bytes(4)
    with cuda.PinnedBuffer(first.nbytes) as up, cuda.DeviceBuffer(first.nbytes) as src, cuda.DeviceBuffer(out_bytes) as dst, \
            cuda.PinnedBuffer(out_bytes) as down, cuda.Stream() as stream:  # fmt: skip
        graph = cuda.capture_graph(stream, lambda: decoder.launch(stream, src.ptr, dst.ptr, 4))
        staged, result = up.array(np.float16, first.shape), down.array(np.float32, decoder.output_shape(4))
        for raw in (first, second):
            staged[:] = raw
            cuda.memcpy_htod_async(src.ptr, staged, stream)
            graph.launch(stream)
            cuda.memcpy_dtoh_async(result, dst.ptr, stream)
            stream.synchronize()
            _assert_same(np.array(result), _contract(ANCHORS_LAST, raw))
        graph.close()


def _yolov3_tiny_outputs():
    """Four bikes frames through YOLOv3-tiny on ONNX Runtime: the pipeline, the letterboxes, the raw output."""
    import cv2

    from daemon.backends.onnxruntime import OnnxRuntimeBackend
    from pipelines.detection import DetectionPipeline

    capture, frames, index = cv2.VideoCapture(str(asset("media/bikes.mp4"))), [], 0
    while len(frames) < 4:
        ok, image = capture.read()
        assert ok, "bikes.mp4 ended early"
        if index in (100, 120, 160, 200):
            frames.append(image)
        index += 1
    labels = asset("labels/coco.txt").read_text().split("\n")[:80]
    pipeline = DetectionPipeline("images", (416, 416), "output", [1, 2535, 85], labels, PreprocessConfig(), DetectionConfig(pad_value=127))
    reference = OnnxRuntimeBackend(asset("models/yolov3_tiny_416.onnx"), 4, 1, OnnxRuntimeConfig())
    slot = reference.create_slot(0)
    metas = [pipeline.preprocess(image, slot.inputs["images"][row]) for row, image in enumerate(frames)]
    reference.submit(slot, len(frames))
    raw = np.array(reference.wait(slot)["output"])
    reference.close()
    return pipeline, metas, raw


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernel_decoding_of_yolov3_tiny_gives_the_host_decoding_results(dtype):
    """Real outputs (bikes through YOLOv3-tiny on ONNX Runtime): the kernel's rows, then the host's
    threshold and NMS, equal decoding the raw output on the host (of the same values, for fp16)."""
    pipeline, metas, raw = _yolov3_tiny_outputs()
    raw = raw.astype(dtype)
    decoded = _kernel(pipeline.layout, raw, pipeline.device_candidates)
    assert decoded.shape == pipeline.reduced_shape(raw.shape)
    on_host = pipeline.postprocess_batch({"output": raw.astype(np.float32)}, metas)
    on_device = pipeline.postprocess_batch({"output": decoded}, metas, decoded=True)
    assert sum(len(r["detections"]) for r in on_host) >= 5
    for want, have in zip(on_host, on_device):
        assert [d["label"] for d in want["detections"]] == [d["label"] for d in have["detections"]]
        for a, b in zip(want["detections"], have["detections"]):
            np.testing.assert_allclose(a["box"], b["box"], atol=0.2)
            assert abs(a["score"] - b["score"]) <= 2e-4
