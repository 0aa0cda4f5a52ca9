"""The same frames through a reference backend and a backend under test, for accuracy checks (the GPU
benchmark's accuracy figure and the GPU tests use it)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["side_by_side", "iou"]


def side_by_side(reference, ref_slot, backend, slot, pipeline, frames: Sequence[np.ndarray], gpu_preprocessing: bool) -> tuple[list[Any], dict, dict]:
    """Preprocess ``frames`` (one batch) into a slot of each backend (the backend under test on the GPU
    when ``gpu_preprocessing``), run both; returns (postprocessing metadata, reference outputs, outputs)."""
    metas = []
    for row, image in enumerate(frames):
        metas.append(pipeline.preprocess(image, ref_slot.inputs[pipeline.input_name][row]))
        if gpu_preprocessing:
            backend.stage_frame(slot, row, image, pipeline.plan(image.shape)[1])
        else:
            pipeline.preprocess(image, slot.inputs[pipeline.input_name][row])
    reference.submit(ref_slot, len(frames))
    backend.submit(slot, len(frames))
    return metas, reference.wait(ref_slot), backend.wait(slot)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
