"""YOLO-family detection: letterbox in, boxes in source pixels out.

Two output layouts are decoded:

* ``yolo_objectness`` -- ``[N, boxes, 5 + classes]``: cx, cy, w, h (input pixels), objectness, class
  probabilities; score = objectness x class probability (YOLOv3, YOLOv5, darknet exports).
* ``yolo_anchors_last`` -- ``[N, 4 + classes, anchors]``: cx, cy, w, h, class scores (YOLOv8 and later).

Non-maximum suppression is class-wise unless ``class_agnostic_nms``: one OpenCV call per batch, every
(image, class) group shifted apart (:func:`batched_nms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from daemon.backends.base import DeviceDecoding
from daemon.config import DetectionConfig, PreprocessConfig

from .imageops import INTERPOLATION, Letterbox, Normalizer, ScratchPool, boxes_to_source, letterbox_geometry

__all__ = ["DetectionPipeline", "check_output_shape", "resolve_layout", "decode_yolo", "decode_batch", "batched_nms", "Candidates"]

OBJECTNESS = "yolo_objectness"
ANCHORS_LAST = "yolo_anchors_last"


def check_output_shape(shape: Sequence[int]) -> None:
    """Raise ValueError unless ``shape`` can be a YOLO output: both layouts are [N, a, b]. A classifier's
    [N, classes] is the usual mistake (``check-config`` and ``create_pipeline`` report it on
    ``model.pipeline``), whatever ``detection.layout`` says."""
    if len(shape) != 3:
        raise ValueError(
            f"shape {list(shape)} is not a detector's [N, boxes, 5+classes] or [N, 4+classes, anchors] "
            "(a classifier? set model.pipeline = 'classification')"
        )


def resolve_layout(shape: Sequence[int], num_classes: int | None, requested: str = "auto") -> str:
    """Pick the decode layout of an output with shape [N, a, b] from the class count."""
    check_output_shape(shape)
    if requested != "auto":
        return requested
    _, a, b = shape
    if num_classes:
        if b == num_classes + 5:
            return OBJECTNESS
        if a == num_classes + 4:
            return ANCHORS_LAST
        raise ValueError(
            f"output shape {list(shape)} fits neither [N, boxes, 5+{num_classes}] nor [N, 4+{num_classes}, anchors]; "
            "check model.labels or set model.detection.layout"
        )
    # Without labels: anchors outnumber channels in both layouts.
    if b > 0 and (a < 0 or a > b):
        return OBJECTNESS
    return ANCHORS_LAST


@dataclass(frozen=True, slots=True)
class Decoded:
    boxes: np.ndarray  # x1, y1, x2, y2 in input pixels
    scores: np.ndarray
    classes: np.ndarray
    keep: np.ndarray | None = None  # which input rows these are (for decode_batch)


def decode_yolo(output: np.ndarray, layout: str, score_threshold: float) -> Decoded:
    """Candidates above the threshold from one image's raw output (2-D). ``layout`` "rows" means rows of
    ``cx, cy, w, h, class scores`` (the anchors-last layout, transposed)."""
    if layout == OBJECTNESS:
        prefilter = output[:, 4] > score_threshold  # score <= objectness, so this prefilter is exact
        rows = output[prefilter]
        class_scores = rows[:, 5:] * rows[:, 4:5]
        boxes_cxcywh = rows[:, :4]
    elif layout in (ANCHORS_LAST, "rows"):
        rows = output.T if layout == ANCHORS_LAST else output
        prefilter = np.ones(len(rows), bool)
        class_scores = rows[:, 4:]
        boxes_cxcywh = rows[:, :4]
    else:
        raise ValueError(f"unknown detection layout {layout!r}")
    if class_scores.shape[1] == 0:
        return Decoded(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = scores > score_threshold
    cxcywh = boxes_cxcywh[keep].astype(np.float32)
    boxes = np.empty_like(cxcywh)
    boxes[:, :2] = cxcywh[:, :2] - cxcywh[:, 2:] / 2
    boxes[:, 2:] = cxcywh[:, :2] + cxcywh[:, 2:] / 2
    return Decoded(boxes, scores[keep].astype(np.float32), classes[keep], np.flatnonzero(prefilter)[keep])


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Greedy NMS within each group (image x class for a whole batch), in one OpenCV call: each group is
    shifted by its own offset so boxes of different groups never overlap (OpenCV's own NMSBoxesBatched
    does the same per image). One call per batch instead of one per image. Indices kept, best first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64)
    span = float(np.abs(boxes).max()) * 2 + 1
    shifted = boxes + (groups.astype(np.float64) * span)[:, None]
    xywh = np.column_stack([shifted[:, :2], shifted[:, 2:] - shifted[:, :2]])
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32), score_threshold, iou_threshold), dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


@dataclass(frozen=True, slots=True)
class Candidates:
    """Boxes above the score threshold from a whole batch: row ``image[i]`` of the batch owns box ``i``."""

    image: np.ndarray
    boxes: np.ndarray  # x1, y1, x2, y2 in input pixels
    scores: np.ndarray
    classes: np.ndarray


def decode_batch(output: np.ndarray, layout: str, score_threshold: float) -> Candidates:
    """Candidates of every image of a raw batch output (3-D), vectorised over the batch."""
    if layout == OBJECTNESS:
        image, index = np.nonzero(output[..., 4] > score_threshold)  # score <= objectness: exact prefilter
        rows = output[image, index]
    elif layout == ANCHORS_LAST:
        best = output[:, 4:, :].max(axis=1) if output.shape[1] > 4 else np.zeros(output.shape[::2], output.dtype)
        image, index = np.nonzero(best > score_threshold)
        rows = output[image, :, index]  # [n, 4 + classes]
    else:
        raise ValueError(f"unknown detection layout {layout!r}")
    decoded = decode_yolo(rows, OBJECTNESS if layout == OBJECTNESS else "rows", score_threshold)
    return Candidates(image[decoded.keep], decoded.boxes, decoded.scores, decoded.classes)


def decode_device_candidates(output: np.ndarray, score_threshold: float) -> Candidates:
    """Rows ``x1, y1, x2, y2, score, class`` written by :meth:`DetectionPipeline.device_decode`. The batch
    is searched as one flat list of rows (one ``flatnonzero`` and one take, image = row // candidates):
    this runs once per batch on the completer thread, and 2-D fancy indexing cost several times more."""
    candidates = output.shape[1]
    flat = output.reshape(-1, output.shape[-1])
    hits = np.flatnonzero(flat[:, 4] > score_threshold)
    rows = flat[hits]
    return Candidates(hits // max(candidates, 1), rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64))

class DetectionPipeline:
    kind = "detection"

    def __init__(
        self,
        input_name: str,
        input_size: tuple[int, int],
        output_name: str,
        output_shape: Sequence[int],
        labels: list[str],
        preprocess: PreprocessConfig,
        options: DetectionConfig,
    ):
        self.input_name = input_name
        self.input_size = input_size
        self.output_name = output_name
        self.labels = labels
        self.options = options
        self.layout = resolve_layout(output_shape, len(labels) or None, options.layout)
        self._normalizer = Normalizer(preprocess.color, preprocess.scale, preprocess.mean, preprocess.std)
        self._pad = self._normalizer.pad_values(options.pad_value)
        self._interpolation = INTERPOLATION[preprocess.interpolation]
        self._scratch = ScratchPool()
        self._plans: dict[tuple[int, int], tuple[Letterbox, Any]] = {}

    def preprocess(self, image: np.ndarray, out: np.ndarray) -> Letterbox:
        width, height = self.input_size
        geometry = letterbox_geometry(image.shape[1], image.shape[0], width, height)
        for channel in range(out.shape[0]):
            out[channel].fill(self._pad[channel])
        region = out[:, geometry.pad_y : geometry.pad_y + geometry.new_h, geometry.pad_x : geometry.pad_x + geometry.new_w]
        if (geometry.new_w, geometry.new_h) == (image.shape[1], image.shape[0]):
            resized = image
        else:
            resized = self._scratch.get(geometry.new_w, geometry.new_h)
            cv2.resize(image, (geometry.new_w, geometry.new_h), dst=resized, interpolation=self._interpolation)
        self._normalizer.write(resized, region)
        return geometry

    device_candidates = 128  # rows kept per image by the device decoding

    @property
    def device_decoding(self) -> DeviceDecoding:
        """What a GPU backend's decoding kernel (:mod:`daemon.gpu.decode`) does for this model."""
        return DeviceDecoding(self.layout, self.device_candidates)

    def reduced_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Per-batch output shape after :meth:`device_decode`: ``[N, device_candidates, 6]``."""
        anchors = shape[1] if self.layout == OBJECTNESS else shape[2]
        return (shape[0], min(self.device_candidates, anchors) if anchors > 0 else self.device_candidates, 6)

    def device_decode(self, output):
        """The device decoding's contract, in torch (the reference the NVRTC kernel is tested against;
        the serving path runs :mod:`daemon.gpu.decode`): each image's ``device_candidates`` best boxes
        as rows ``x1, y1, x2, y2, score, class`` (input pixels), best first. Only these ~3 KB per image
        come back to the host, already decoded; the host applies the threshold and one batched NMS.
        Exact unless more than that many boxes of one image pass the score threshold."""
        import torch

        if self.layout == OBJECTNESS:
            scores, classes = (output[..., 5:] * output[..., 4:5]).max(dim=-1)
            boxes = output[..., :4]
        else:
            scores, classes = output[:, 4:, :].max(dim=1)
            boxes = output[:, :4, :].transpose(1, 2)
        top = scores.topk(min(self.device_candidates, scores.shape[1]), dim=1)
        cxcywh = torch.gather(boxes, 1, top.indices.unsqueeze(-1).expand(-1, -1, 4))
        half = cxcywh[..., 2:] / 2
        chosen = torch.gather(classes, 1, top.indices).to(output.dtype)
        return torch.cat([cxcywh[..., :2] - half, cxcywh[..., :2] + half, top.values.unsqueeze(-1), chosen.unsqueeze(-1)], dim=-1)

    @property
    def normalizer(self) -> Normalizer:
        return self._normalizer

    @property
    def pad_grey(self) -> int:
        return self.options.pad_value

    def plan(self, shape: tuple[int, ...]):
        """For GPU preprocessing: the postprocessing metadata and the kernel geometry of a frame (cached
        per frame size: cameras keep theirs, so this is a dictionary lookup per frame)."""
        key = (shape[0], shape[1])
        planned = self._plans.get(key)
        if planned is None:
            from daemon.gpu.preprocess import letterbox_params

            width, height = self.input_size
            geometry = letterbox_geometry(shape[1], shape[0], width, height)
            planned = (geometry, letterbox_params(shape[1], shape[0], geometry, width, height))
            if len(self._plans) < 64:
                self._plans[key] = planned
        return planned

    def postprocess(self, outputs: Mapping[str, np.ndarray], row: int, meta: Letterbox, decoded: bool = False) -> dict[str, Any]:
        """One row (see :meth:`postprocess_batch`)."""
        return self.postprocess_batch({self.output_name: outputs[self.output_name][row : row + 1]}, [meta], decoded)[0]

    def postprocess_batch(self, outputs: Mapping[str, np.ndarray], metas: Sequence[Letterbox], decoded: bool = False) -> list[dict[str, Any]]:
        """Every row of a batch at once: decoding, one NMS call and the mapping back to source pixels are
        vectorised over the batch, so the per-frame Python left is building the detection dictionaries.
        ``decoded``: the backend ran :meth:`device_decode`."""
        options = self.options
        output = outputs[self.output_name][: len(metas)]
        if decoded:
            found = decode_device_candidates(output, options.score_threshold)
        else:
            found = decode_batch(output, self.layout, options.score_threshold)
        if len(found.image) == 0:
            return [{"detections": []} for _ in metas]
        groups = found.image if options.class_agnostic_nms else found.image * (int(found.classes.max(initial=0)) + 1) + found.classes
        keep = batched_nms(found.boxes, found.scores, groups, options.score_threshold, options.iou_threshold)
        keep = keep[np.argsort(found.image[keep], kind="stable")]  # by image, best first within each
        image = found.image[keep]
        bounds = np.arange(len(metas) + 1)
        starts = np.searchsorted(image, bounds)
        if len(keep) > options.max_detections:  # otherwise no image can have more than max_detections
            rank = np.arange(len(keep)) - starts[image]
            keep, image = keep[rank < options.max_detections], image[rank < options.max_detections]
            starts = np.searchsorted(image, bounds)
        # Back to source pixels, all boxes at once, each with its own frame's letterbox.
        inverse = np.array([meta.inverse for meta in metas], np.float64).reshape(-1, 5)[image]
        boxes = np.round(boxes_to_source(found.boxes[keep], inverse), 1).tolist()
        scores = np.round(found.scores[keep].astype(np.float64), 4).tolist()
        return self._results(found.classes[keep].tolist(), scores, boxes, starts.tolist())

    def _results(self, classes: list[int], scores: list[float], boxes: list[list[float]], starts: list[int]) -> list[dict[str, Any]]:
        """The result fields of each row: every detection dictionary built in one pass over the batch's
        detections (rows ``starts[r]:starts[r + 1]``), then sliced per row; no per-row numpy indexing."""
        labels, count = self.labels, len(self.labels)
        detections = [
            {"label": labels[c] if c < count else f"class_{c}", "class_id": c, "score": score, "box": box}
            for c, score, box in zip(classes, scores, boxes)
        ]
        return [{"detections": detections[starts[row] : starts[row + 1]]} for row in range(len(starts) - 1)]
