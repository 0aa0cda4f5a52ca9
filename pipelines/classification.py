"""Image classification: resize the short side, centre-crop, normalise; softmax top-k with labels."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from daemon.config import ClassificationConfig, PreprocessConfig
from daemon.messages import label_of

from .imageops import INTERPOLATION, Normalizer, ScratchPool, crop_geometry

__all__ = ["ClassificationPipeline", "check_output_shape", "top_k"]


def check_output_shape(shape: Sequence[int]) -> None:
    """Raise ValueError unless ``shape`` is one score per class per image: [N, classes], trailing 1s
    allowed ([N, classes, 1, 1]), since :meth:`ClassificationPipeline.postprocess` flattens each row into
    one score vector. A detector's [N, boxes, 5+classes] would flatten into meaningless "classes", so it
    is refused (a dynamic dimension counts as a real one)."""
    per_image = [d for d in shape[1:] if d != 1]
    if len(per_image) != 1:
        raise ValueError(
            f"shape {list(shape)} is not a classifier's [N, classes] (a detector? set model.pipeline = 'detection')"
        )


def top_k(logits: np.ndarray, k: int, softmax: str) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, probabilities) of the k best classes, best first."""
    values = logits.astype(np.float64, copy=False).reshape(-1)
    already_probabilities = values.min() >= 0 and abs(values.sum() - 1.0) < 1e-3
    if softmax == "yes" or (softmax == "auto" and not already_probabilities):
        exp = np.exp(values - values.max())
        values = exp / exp.sum()
    k = min(k, values.size)
    best = np.argpartition(-values, k - 1)[:k]
    best = best[np.argsort(-values[best], kind="stable")]
    return best, values[best]


class ClassificationPipeline:
    kind = "classification"

    def __init__(
        self,
        input_name: str,
        input_size: tuple[int, int],
        output_name: str,
        labels: list[str],
        preprocess: PreprocessConfig,
        options: ClassificationConfig,
    ):
        self.input_name = input_name
        self.input_size = input_size
        self.output_name = output_name
        self.labels = labels
        self.options = options
        width, height = input_size
        self._short_side = options.resize_short or round(min(width, height) / 0.875)
        self._normalizer = Normalizer(preprocess.color, preprocess.scale, preprocess.mean, preprocess.std)
        self._interpolation = INTERPOLATION[preprocess.interpolation]
        self._scratch = ScratchPool()

    def preprocess(self, image: np.ndarray, out: np.ndarray) -> None:
        width, height = self.input_size
        geometry = crop_geometry(image.shape[1], image.shape[0], self._short_side, width, height)
        resized = self._scratch.get(geometry.resized_w, geometry.resized_h)
        cv2.resize(image, (geometry.resized_w, geometry.resized_h), dst=resized, interpolation=self._interpolation)
        crop = resized[geometry.y : geometry.y + height, geometry.x : geometry.x + width]
        self._normalizer.write(crop, out)
        return None

    @property
    def normalizer(self) -> Normalizer:
        return self._normalizer

    pad_grey = 0
    device_decoding = None  # nothing to reduce on the device: the host takes the top k of the scores

    def plan(self, shape: tuple[int, ...]):
        """For GPU preprocessing (bilinear only, whatever ``preprocess.interpolation`` says)."""
        from daemon.gpu.preprocess import crop_params

        width, height = self.input_size
        geometry = crop_geometry(shape[1], shape[0], self._short_side, width, height)
        return None, crop_params(shape[1], shape[0], geometry, width, height)

    def postprocess_batch(self, outputs: Mapping[str, np.ndarray], metas: Sequence[None], decoded: bool = False) -> list[dict[str, Any]]:
        """Every row of a batch (``decoded`` is unused: classification has no device decoding)."""
        return [self.postprocess(outputs, row, meta) for row, meta in enumerate(metas)]

    def postprocess(self, outputs: Mapping[str, np.ndarray], row: int, meta: None, decoded: bool = False) -> dict[str, Any]:
        indices, probabilities = top_k(outputs[self.output_name][row], self.options.top_k, self.options.softmax)
        return {
            "classifications": [
                {
                    "label": label_of(self.labels, int(i)),
                    "class_id": int(i),
                    "score": round(float(p), 4),
                }
                for i, p in zip(indices.tolist(), probabilities.tolist())
            ]
        }
