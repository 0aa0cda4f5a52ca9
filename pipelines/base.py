"""What a model family provides: preprocessing into a preallocated input row, and decoding of outputs.

A pipeline is built once per daemon from the model config and the backend's tensor specs. ``preprocess``
writes one frame into ``out`` (one batch row of the backend's input buffer, CHW in the model's dtype)
and returns whatever ``postprocess`` needs to map results back to source pixels. ``postprocess`` (one
row) and ``postprocess_batch`` (the scheduler's path) return the JSON-ready result fields of the message
(``{"detections": [...]}`` or ``{"classifications": [...]}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

__all__ = ["Pipeline", "load_labels"]


class Pipeline(Protocol):
    kind: str
    input_name: str
    input_size: tuple[int, int]  # (width, height)
    labels: list[str]  # class names by class id (analytics reads them for class filters and events)

    device_decoding: Any  # daemon.backends.base.DeviceDecoding, or None: what a GPU backend may decode on the device

    @property
    def normalizer(self) -> Any:
        """The per-channel ``pixel * a + b`` of the model input (GPU preprocessing applies the same)."""

    @property
    def pad_grey(self) -> int:
        """The grey level of letterbox padding."""

    def preprocess(self, image: np.ndarray, out: np.ndarray) -> Any:
        """Write the BGR uint8 ``image`` into ``out`` (C, H, W); return the metadata postprocess needs."""

    def plan(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """For GPU preprocessing: (postprocessing metadata, kernel geometry) of a frame of ``shape``."""

    def postprocess(self, outputs: Mapping[str, np.ndarray], row: int, meta: Any) -> dict[str, Any]:
        """Decode batch row ``row`` of ``outputs`` into the message's result fields."""

    def postprocess_batch(self, outputs: Mapping[str, np.ndarray], metas: Sequence[Any], decoded: bool = False) -> list[dict[str, Any]]:
        """Every row at once (the scheduler's path: one call per batch). ``decoded``: the backend already
        decoded the output on the device (``device_decoding``)."""


def load_labels(labels: Path | Sequence[str] | None, count: int | None, metadata_names: Sequence[str] | None = None) -> list[str]:
    """Labels from a file (one per line), an inline list, the model's metadata, or ``class_<i>``."""
    if isinstance(labels, Path):
        names = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif labels is not None:
        names = list(labels)
    elif metadata_names:
        names = list(metadata_names)
    else:
        names = [f"class_{i}" for i in range(count or 0)]
    return names
