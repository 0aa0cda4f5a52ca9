"""The same frames through a reference backend and a backend under test, for accuracy checks (the GPU
benchmark's accuracy figure and the GPU tests use it)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["side_by_side"]


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
