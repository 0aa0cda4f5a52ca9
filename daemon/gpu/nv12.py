"""A decoded frame's NV12 planes as PyNvVideoCodec describes them, and the copy of them into one
contiguous buffer (luma rows of ``width`` bytes, then the interleaved chroma rows): what the daemon's NVDEC
readers (:mod:`daemon.gpu.nvdec`) and the decoding processes (:mod:`daemon.gpu.nvdecchild`) both do with a
frame before its decoder reuses the surface. Imports nothing heavy: a decoding process loads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Nv12Planes"]

Memcpy2D = Callable[[int, int, int, int, int, int], None]
"""``(dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, rows)``: a device-to-device copy on the caller's stream."""


@dataclass(frozen=True, slots=True)
class Nv12Planes:
    width: int
    height: int
    y_ptr: int
    y_pitch: int
    uv_ptr: int
    uv_pitch: int

    @classmethod
    def of(cls, frame: Any) -> "Nv12Planes":
        """``frame``: PyNvVideoCodec's decoded frame; its planes' ``__cuda_array_interface__`` (shape a list,
        strides absent when the rows are packed)."""
        y, uv = (plane.__cuda_array_interface__ for plane in frame.cuda())
        height, width = int(y["shape"][0]), int(y["shape"][1])
        return cls(width, height, int(y["data"][0]), y["strides"][0] if y.get("strides") else width,
                   int(uv["data"][0]), uv["strides"][0] if uv.get("strides") else width)

    @property
    def nbytes(self) -> int:
        """The size of the contiguous copy."""
        return self.width * self.height * 3 // 2

    def copy_to(self, dst: int, memcpy2d: Memcpy2D) -> None:
        """Both planes to ``dst``, packed: one copy when the decoder keeps chroma right after luma in one
        allocation at one pitch (as it does), two otherwise."""
        width, height = self.width, self.height
        if self.uv_pitch == self.y_pitch and self.uv_ptr == self.y_ptr + self.y_pitch * height:
            memcpy2d(dst, width, self.y_ptr, self.y_pitch, width, height + height // 2)
        else:
            memcpy2d(dst, width, self.y_ptr, self.y_pitch, width, height)
            memcpy2d(dst + width * height, width, self.uv_ptr, self.uv_pitch, width, height // 2)
