"""The same frames through a reference backend and a backend under test, for accuracy checks (the GPU
benchmark's accuracy figure and the GPU tests use it)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["side_by_side", "iou"]


def side_by_side(reference, ref_slot, backend, slot, pipeline, frames: Sequence[np.ndarray]) -> tuple[list[Any], dict, dict]:
    """Stage ``frames`` (one batch) into a slot of each backend, each the way it was configured (the
    backend under test may preprocess on the GPU), run both; returns (the reference's postprocessing
    metadata, reference outputs, outputs)."""
    metas = []
    for row, image in enumerate(frames):
        metas.append(reference.stage(ref_slot, row, image, pipeline))
        backend.stage(slot, row, image, pipeline)
    reference.submit(ref_slot, len(frames))
    backend.submit(slot, len(frames))
    return metas, reference.wait(ref_slot), backend.wait(slot)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
