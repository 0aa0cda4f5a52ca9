"""Image geometry shared by the pipelines: letterbox, resize-and-centre-crop, normalise into CHW.

Every function writes into caller-provided arrays. Resized images go into scratch buffers kept per
source geometry (``ScratchPool``), so steady-state preprocessing allocates nothing per frame. The
definition here (OpenCV bilinear resize with half-pixel centres, then per-channel affine normalisation)
is the reference the GPU kernels are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Letterbox", "letterbox_geometry", "boxes_to_source", "CropGeometry", "crop_geometry", "ScratchPool", "Normalizer", "INTERPOLATION"]

INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Source (w, h) scaled by ``scale`` to (new_w, new_h) and placed at (pad_x, pad_y) in the input."""

    src_w: int
    src_h: int
    scale: float
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @property
    def inverse(self) -> tuple[int, int, float, int, int]:
        """(pad_x, pad_y, scale, src_w, src_h): what :func:`boxes_to_source` needs of this letterbox."""
        return (self.pad_x, self.pad_y, self.scale, self.src_w, self.src_h)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map x1,y1,x2,y2 boxes from input pixels back to source pixels, clipped to the frame."""
        return boxes_to_source(boxes, self.inverse).astype(np.float32)


def boxes_to_source(boxes: np.ndarray, inverse) -> np.ndarray:
    """x1,y1,x2,y2 boxes from input pixels back to source pixels (float64), clipped to the frame.
    ``inverse``: one :attr:`Letterbox.inverse` for every box, or an array of them, one row per box (a
    whole batch's boxes, each with its own frame's letterbox)."""
    inverse = np.asarray(inverse, np.float64).reshape(-1, 5)
    out = (boxes.astype(np.float64) - inverse[:, [0, 1, 0, 1]]) / inverse[:, 2:3]
    np.clip(out, 0, inverse[:, [3, 4, 3, 4]], out=out)
    return out


def letterbox_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    return Letterbox(src_w, src_h, scale, new_w, new_h, (dst_w - new_w) // 2, (dst_h - new_h) // 2)


@dataclass(frozen=True, slots=True)
class CropGeometry:
    """Source resized to (resized_w, resized_h), then the (crop_w, crop_h) window at (x, y) is taken."""

    resized_w: int
    resized_h: int
    x: int
    y: int
    crop_w: int
    crop_h: int


def crop_geometry(src_w: int, src_h: int, short_side: int, crop_w: int, crop_h: int) -> CropGeometry:
    scale = short_side / min(src_w, src_h)
    resized_w, resized_h = max(crop_w, round(src_w * scale)), max(crop_h, round(src_h * scale))
    return CropGeometry(resized_w, resized_h, (resized_w - crop_w) // 2, (resized_h - crop_h) // 2, crop_w, crop_h)


class ScratchPool:
    """Reusable HxWx3 uint8 buffers keyed by size: one allocation per distinct source geometry."""

    def __init__(self, limit: int = 16):
        self._buffers: dict[tuple[int, int], np.ndarray] = {}
        self._limit = limit

    def get(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        buffer = self._buffers.get(key)
        if buffer is None:
            if len(self._buffers) >= self._limit:
                self._buffers.pop(next(iter(self._buffers)))
            buffer = self._buffers[key] = np.empty((height, width, 3), dtype=np.uint8)
        return buffer


class Normalizer:
    """``out[c] = pixel[c'] * a[c] + b[c]`` with c' the BGR channel feeding model channel c.

    ``a = scale / std`` and ``b = -mean / std``, so (pixel * scale - mean) / std in one multiply-add per
    element, written straight into the model input (CHW, model dtype)."""

    def __init__(self, color: str, scale: float, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.channels = (2, 1, 0) if color == "rgb" else (0, 1, 2)  # model channel -> BGR source channel
        std_arr = np.asarray(std, dtype=np.float64)
        self.a = (scale / std_arr).astype(np.float32)
        self.b = (-np.asarray(mean, dtype=np.float64) / std_arr).astype(np.float32)

    def pad_values(self, grey: int) -> np.ndarray:
        """The normalised value of a grey ``grey`` pixel per model channel."""
        return grey * self.a + self.b

    def write(self, hwc_bgr: np.ndarray, out_chw: np.ndarray) -> None:
        """Normalise ``hwc_bgr`` (h, w, 3 uint8) into ``out_chw`` (3, h, w)."""
        for model_channel, source_channel in enumerate(self.channels):
            target = out_chw[model_channel]
            np.multiply(hwc_bgr[:, :, source_channel], self.a[model_channel], out=target, casting="unsafe")
            if self.b[model_channel] != 0:
                np.add(target, self.b[model_channel], out=target, casting="unsafe")
