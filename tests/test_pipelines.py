"""Pre- and post-processing: geometry and decoding on constructed arrays, then the real models on real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from daemon.backends.onnxruntime import OnnxRuntimeBackend
from daemon.config import DetectionConfig, OnnxRuntimeConfig, PreprocessConfig, parse_config
from pipelines import create_pipeline
from pipelines.classification import top_k
from pipelines.detection import ANCHORS_LAST, OBJECTNESS, DetectionPipeline, decode_yolo, resolve_layout
from pipelines.imageops import Normalizer, letterbox_geometry

from .conftest import asset


def test_letterbox_geometry_and_inverse_mapping():
    geometry = letterbox_geometry(640, 272, 416, 416)
    assert (geometry.new_w, geometry.new_h, geometry.pad_x, geometry.pad_y) == (416, 177, 0, 119)
    boxes = np.array([[0, 119, 416, 296], [-10, 100, 500, 400]], np.float32)
    mapped = geometry.to_source(boxes)
    np.testing.assert_allclose(mapped[0], [0, 0, 640, 272], atol=1)
    np.testing.assert_allclose(mapped[1], [0, 0, 640, 272])  # clipped to the frame


def test_layout_resolution():
    assert resolve_layout([1, 2535, 85], 80) == OBJECTNESS
    assert resolve_layout([1, 84, 8400], 80) == ANCHORS_LAST
    assert resolve_layout([1, 6, 8400], None) == ANCHORS_LAST
    assert resolve_layout([1, 2535, 85], None) == OBJECTNESS
    with pytest.raises(ValueError, match="fits neither"):
        resolve_layout([1, 2535, 85], 20)


def test_decode_objectness_layout_multiplies_objectness_and_class():
    out = np.zeros((3, 5 + 3), np.float32)
    out[0, :5] = [100, 100, 20, 40, 0.9]
    out[0, 5 + 2] = 0.8  # class 2, score 0.72
    out[1, :5] = [50, 50, 10, 10, 0.2]  # objectness below threshold
    out[1, 5] = 1.0
    out[2, :5] = [10, 10, 4, 4, 0.9]
    out[2, 5 + 1] = 0.2  # 0.18 < threshold
    decoded = decode_yolo(out, OBJECTNESS, 0.3)
    np.testing.assert_allclose(decoded.boxes, [[90, 80, 110, 120]])
    np.testing.assert_allclose(decoded.scores, [0.72], rtol=1e-6)
    assert decoded.classes.tolist() == [2]


def test_decode_anchors_last_layout():
    out = np.zeros((4 + 2, 5), np.float32)  # 2 classes, 5 anchors
    out[:4, 3] = [200, 100, 40, 20]
    out[4 + 1, 3] = 0.9
    decoded = decode_yolo(out, ANCHORS_LAST, 0.5)
    np.testing.assert_allclose(decoded.boxes, [[180, 90, 220, 110]])
    assert decoded.classes.tolist() == [1]


def test_classwise_nms_keeps_overlapping_boxes_of_different_classes():
    pipeline = DetectionPipeline(
        "images", (100, 100), "output", [1, 4, 5 + 2], ["a", "b"], PreprocessConfig(), DetectionConfig()
    )
    # two near-identical boxes of class a, one of class b on the same spot, one far away of class a
    raw = np.zeros((1, 4, 5 + 2), np.float32)
    raw[0, 0] = [50, 50, 20, 20, 1.0, 0.9, 0.0]
    raw[0, 1] = [51, 50, 20, 20, 1.0, 0.8, 0.0]
    raw[0, 2] = [50, 51, 20, 20, 1.0, 0.0, 0.7]
    raw[0, 3] = [10, 10, 8, 8, 1.0, 0.6, 0.0]
    assert pipeline.layout == OBJECTNESS
    meta = letterbox_geometry(100, 100, 100, 100)
    detections = pipeline.postprocess({"output": raw}, 0, meta)["detections"]
    assert [(d["label"], d["score"]) for d in detections] == [("a", 0.9), ("b", 0.7), ("a", 0.6)]
    pipeline.options = DetectionConfig(class_agnostic_nms=True)
    detections = pipeline.postprocess({"output": raw}, 0, meta)["detections"]
    assert [(d["label"], d["score"]) for d in detections] == [("a", 0.9), ("a", 0.6)]


def test_normalizer_writes_rgb_chw_in_place_without_allocating_the_output():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    out = np.full((3, 2, 3), -1, np.float32)
    Normalizer("rgb", 1.0, (127, 127, 127), (128, 128, 128)).write(image, out)
    np.testing.assert_allclose(out[:, 0, 0], [(30 - 127) / 128, (20 - 127) / 128, (10 - 127) / 128], rtol=1e-6)
    half = np.zeros((3, 2, 3), np.float16)
    Normalizer("bgr", 1 / 255, (0, 0, 0), (1, 1, 1)).write(image, half)
    np.testing.assert_allclose(half[:, 1, 2], [10 / 255, 20 / 255, 30 / 255], rtol=1e-3)


def test_top_k_softmax():
    indices, probabilities = top_k(np.array([1.0, 3.0, 2.0]), 2, "auto")
    assert indices.tolist() == [1, 2]
    assert probabilities.sum() < 1 and probabilities[0] == pytest.approx(np.exp(3) / np.exp([1, 2, 3]).sum())
    indices, probabilities = top_k(np.array([0.1, 0.7, 0.2]), 1, "auto")
    assert indices.tolist() == [1] and probabilities.tolist() == [pytest.approx(0.7)]


def real_pipeline(model: str, pipeline: str, labels: str, **model_fields):
    config = parse_config(
        {
            "sources": [{"id": "x", "uri": "synthetic:64x64"}],
            "model": {"path": str(asset(model)), "pipeline": pipeline, "labels": str(asset(labels)), **model_fields},
        }
    )
    backend = OnnxRuntimeBackend(config.model.path, 4, 1, OnnxRuntimeConfig())
    return backend, create_pipeline(config.model, backend.info)


def run_one(backend, pipeline, image):
    slot = backend.create_slot(0)
    meta = pipeline.preprocess(image, slot.inputs[pipeline.input_name][0])
    backend.submit(slot, 1)
    return pipeline.postprocess(backend.wait(slot, 60), 0, meta)


def test_yolov3_tiny_finds_person_and_bicycles_on_a_real_bikes_frame():
    backend, pipeline = real_pipeline(
        "models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127}
    )
    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 120)
    ok, image = capture.read()
    assert ok
    detections = run_one(backend, pipeline, image)["detections"]
    labels = [d["label"] for d in detections]
    assert labels[0] == "person" and detections[0]["score"] > 0.9
    assert labels.count("bicycle") >= 2
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 272
    backend.close()


def test_efficientnet_lite0_says_cat_for_chelsea():
    backend, pipeline = real_pipeline(
        "models/efficientnet_lite0.onnx",
        "classification",
        "labels/imagenet.txt",
        preprocess={"scale": 1.0, "mean": [127, 127, 127], "std": [128, 128, 128], "interpolation": "cubic"},
        classification={"resize_short": 256, "top_k": 3},
    )
    top = run_one(backend, pipeline, cv2.imread(str(asset("media/chelsea.png"))))["classifications"]
    assert top[0]["class_id"] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert "cat" in top[0]["label"]
    assert sum(c["score"] for c in top if c["class_id"] in (281, 282, 285)) > 0.7
    backend.close()


def _per_image_reference(pipeline, raw, meta):
    """The per-image algorithm (decode, OpenCV's own per-image batched NMS, map back) that one call per
    batch must reproduce."""
    options = pipeline.options
    decoded = decode_yolo(raw, pipeline.layout, options.score_threshold)
    if len(decoded.boxes) == 0:
        return []
    xywh = np.column_stack([decoded.boxes[:, :2], decoded.boxes[:, 2:] - decoded.boxes[:, :2]]).astype(np.float64)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), decoded.scores.tolist(), decoded.classes.tolist(), options.score_threshold, options.iou_threshold)).reshape(-1)
    keep = keep[np.argsort(-decoded.scores[keep], kind="stable")][: options.max_detections]
    boxes = meta.to_source(decoded.boxes[keep])
    return [(int(c), round(float(s), 4), [round(float(v), 1) for v in b]) for b, s, c in zip(boxes, decoded.scores[keep], decoded.classes[keep])]


@pytest.mark.parametrize("max_detections", [100, 2])
def test_one_postprocessing_call_per_batch_equals_per_image_decoding_on_real_outputs(max_detections):
    """Four real bikes frames of different sizes in one batch: vectorised decoding, one NMS call for the
    whole batch (boxes of other images and classes must not suppress each other) and the mapping back
    give each image the detections of the per-image algorithm, in the same order."""
    backend, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127, "max_detections": max_detections})
    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    frames, index = [], 0
    while len(frames) < 4:
        ok, image = capture.read()
        assert ok
        if index in (40, 100, 120, 200):
            frames.append(image if len(frames) % 2 == 0 else cv2.resize(image, (1280, 720)))
        index += 1
    slot = backend.create_slot(0)
    metas = [pipeline.preprocess(image, slot.inputs["images"][row]) for row, image in enumerate(frames)]
    backend.submit(slot, 4)
    outputs = backend.wait(slot, 60)
    batch = pipeline.postprocess_batch(outputs, metas)
    total = 0
    for row, meta in enumerate(metas):
        want = _per_image_reference(pipeline, outputs["output"][row], meta)
        have = [(d["class_id"], d["score"], d["box"]) for d in batch[row]["detections"]]
        assert [c for c, _, _ in have] == [c for c, _, _ in want]
        for (_, s1, b1), (_, s2, b2) in zip(have, want):
            assert s1 == pytest.approx(s2, abs=1e-4)
            np.testing.assert_allclose(b1, b2, atol=0.11)
        assert batch[row] == pipeline.postprocess(outputs, row, meta)  # the one-row path is the same code
        total += len(want)
    assert total >= (8 if max_detections == 100 else 4)
    backend.close()


def test_a_batch_without_detections_gives_empty_lists():
    pipeline = DetectionPipeline("images", (100, 100), "output", [1, 4, 5 + 2], ["a", "b"], PreprocessConfig(), DetectionConfig())
    meta = letterbox_geometry(100, 100, 100, 100)
    assert pipeline.postprocess_batch({"output": np.zeros((3, 4, 7), np.float32)}, [meta] * 3) == [{"detections": []}] * 3


def test_results_keep_only_the_frame_shape_when_no_thumbnail_needs_pixels():
    """The scheduler hands results to the publisher without their pixels unless thumbnails are on, so a
    backlog of results never holds decoded frames alive."""
    import threading

    from daemon.config import DropPolicy
    from daemon.entities import Frame, ImageShape
    from daemon.framequeue import Multiplexer
    from daemon.scheduler import Scheduler
    from daemon.serving import ServingUnit
    from daemon.stats import SourceStats

    backend, pipeline = real_pipeline("models/yolov3_tiny_416.onnx", "detection", "labels/coco.txt", detection={"pad_value": 127})
    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 120)
    ok, image = capture.read()
    assert ok
    for keep_pixels in (False, True):
        mux = Multiplexer()
        queue = mux.add_queue("cam", 4, DropPolicy.BLOCK)
        got, done = [], threading.Event()

        def sink(item, got=got, done=done):
            got.append(item)
            if len(got) == 3:
                done.set()

        scheduler = Scheduler(mux, ServingUnit(backend, pipeline, {}), sink, {"cam": SourceStats("cam", "x", "file")}, max_batch=4, max_wait_s=0.001, slots=2, keep_pixels=keep_pixels)
        scheduler.start()
        for index in range(2):
            queue.put(Frame("cam", index, None, image.copy(), 0.0, 0.0), threading.Event())
        queue.close("end_of_file")
        assert done.wait(60)
        scheduler.close_when_drained()
        assert scheduler.join(30)
        results = [item for item in got if hasattr(item, "frame")]
        assert len(results) == 2 and all(r.results["detections"] for r in results)
        for result in results:
            if keep_pixels:
                assert isinstance(result.frame.image, np.ndarray) and result.frame.image.shape == image.shape
            else:
                assert isinstance(result.frame.image, ImageShape) and result.frame.image.shape == image.shape
    backend.close()
