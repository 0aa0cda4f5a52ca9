"""GPU preprocessing: uint8 frames in device memory -> the engine's input tensor, in one kernel.

The kernel reproduces the CPU path of :mod:`pipelines.imageops` exactly in its definition: OpenCV's
bilinear resize (half-pixel centres, edge clamping, result rounded to 8 bits as ``cv2.resize`` does
for uint8 images), letterbox padding or a centre crop, the model's channel order, the per-channel
``pixel * a + b`` normalisation and HWC -> CHW, written as fp32 or fp16. Input frames are a quarter of
the bytes of fp32 input, so the host->device copy shrinks by 4x. An NV12 variant takes frames decoded by
NVDEC straight from device memory (BT.601 or BT.709, limited range), with no host round trip.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from ..cuda import Stream
from .nvrtc import INT, PTR, Module, compile_module

__all__ = ["KernelGeometry", "GpuPreprocessor", "letterbox_params", "crop_params"]

_SOURCE = r"""
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}

template <typename T> __device__ __forceinline__ void put(T* dst, size_t i, float v);
template <> __device__ __forceinline__ void put<float>(float* dst, size_t i, float v) { dst[i] = v; }
template <> __device__ __forceinline__ void put<unsigned short>(unsigned short* dst, size_t i, float v) { dst[i] = f2h(v); }

struct Geometry {
    int dst_w, dst_h;                 // engine input size
    int rx, ry, rw, rh;               // where the resized image lands in the input (letterbox region)
    float off_x, off_y;               // crop offset, in resized pixels
    float scale_x, scale_y;           // source pixels per resized pixel
};

struct Norm {
    float a[3], b[3], pad[3];         // per model channel: out = pixel * a + b; pad = normalised border
    int src_channel[3];               // BGR channel feeding model channel c
};

// OpenCV INTER_LINEAR source coordinate and weight along one axis.
__device__ __forceinline__ void axis(float d, float scale, int size, int& i0, int& i1, float& w) {
    float s = (d + 0.5f) * scale - 0.5f;
    int f = (int)floorf(s);
    w = s - (float)f;
    if (f < 0) { f = 0; w = 0.f; }
    if (f >= size - 1) { f = size - 1; w = 0.f; }
    i0 = f; i1 = min(f + 1, size - 1);
}

template <typename T>
__device__ void bgr_body(const unsigned char* __restrict__ src, int src_w, int src_h, int pitch,
                         T* __restrict__ dst, Geometry g, Norm n) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= g.dst_w || y >= g.dst_h) return;
    size_t plane = (size_t)g.dst_w * g.dst_h, o = (size_t)y * g.dst_w + x;
    if (x < g.rx || x >= g.rx + g.rw || y < g.ry || y >= g.ry + g.rh) {
        for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, n.pad[c]);
        return;
    }
    int x0, x1, y0, y1; float wx, wy;
    axis((float)(x - g.rx) + g.off_x, g.scale_x, src_w, x0, x1, wx);
    axis((float)(y - g.ry) + g.off_y, g.scale_y, src_h, y0, y1, wy);
    const unsigned char* r0 = src + (size_t)y0 * pitch;
    const unsigned char* r1 = src + (size_t)y1 * pitch;
    float px[3];
    for (int s = 0; s < 3; ++s) {
        float top = r0[x0 * 3 + s] * (1.f - wx) + r0[x1 * 3 + s] * wx;
        float bot = r1[x0 * 3 + s] * (1.f - wx) + r1[x1 * 3 + s] * wx;
        px[s] = rintf(top * (1.f - wy) + bot * wy);   // cv2.resize rounds uint8 results
    }
    for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, px[n.src_channel[c]] * n.a[c] + n.b[c]);
}

// NV12 (Y plane, then interleaved UV at half resolution), limited range -> BGR, then as above.
__device__ __forceinline__ void nv12_bgr(const unsigned char* y_plane, const unsigned char* uv_plane, int pitch,
                                         int x, int y, int bt709, float* bgr) {
    float Y = 1.164383f * ((float)y_plane[(size_t)y * pitch + x] - 16.f);
    const unsigned char* uv = uv_plane + (size_t)(y >> 1) * pitch + (x & ~1);
    float U = (float)uv[0] - 128.f, V = (float)uv[1] - 128.f;
    float r, gr, b;
    if (bt709) { r = Y + 1.792741f * V; gr = Y - 0.213249f * U - 0.532909f * V; b = Y + 2.112402f * U; }
    else       { r = Y + 1.596027f * V; gr = Y - 0.391762f * U - 0.812968f * V; b = Y + 2.017232f * U; }
    bgr[0] = fminf(fmaxf(b, 0.f), 255.f); bgr[1] = fminf(fmaxf(gr, 0.f), 255.f); bgr[2] = fminf(fmaxf(r, 0.f), 255.f);
}

template <typename T>
__device__ void nv12_body(const unsigned char* __restrict__ y_plane, const unsigned char* __restrict__ uv_plane,
                          int src_w, int src_h, int pitch, int bt709, T* __restrict__ dst, Geometry g, Norm n) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= g.dst_w || y >= g.dst_h) return;
    size_t plane = (size_t)g.dst_w * g.dst_h, o = (size_t)y * g.dst_w + x;
    if (x < g.rx || x >= g.rx + g.rw || y < g.ry || y >= g.ry + g.rh) {
        for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, n.pad[c]);
        return;
    }
    int x0, x1, y0, y1; float wx, wy;
    axis((float)(x - g.rx) + g.off_x, g.scale_x, src_w, x0, x1, wx);
    axis((float)(y - g.ry) + g.off_y, g.scale_y, src_h, y0, y1, wy);
    float p00[3], p01[3], p10[3], p11[3], px[3];
    nv12_bgr(y_plane, uv_plane, pitch, x0, y0, bt709, p00); nv12_bgr(y_plane, uv_plane, pitch, x1, y0, bt709, p01);
    nv12_bgr(y_plane, uv_plane, pitch, x0, y1, bt709, p10); nv12_bgr(y_plane, uv_plane, pitch, x1, y1, bt709, p11);
    for (int s = 0; s < 3; ++s)
        px[s] = rintf((p00[s] * (1.f - wx) + p01[s] * wx) * (1.f - wy) + (p10[s] * (1.f - wx) + p11[s] * wx) * wy);
    for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, px[n.src_channel[c]] * n.a[c] + n.b[c]);
}

extern "C" __global__ void bgr_f32(const unsigned char* src, int w, int h, int pitch, float* dst, Geometry g, Norm n) { bgr_body<float>(src, w, h, pitch, dst, g, n); }
extern "C" __global__ void bgr_f16(const unsigned char* src, int w, int h, int pitch, unsigned short* dst, Geometry g, Norm n) { bgr_body<unsigned short>(src, w, h, pitch, dst, g, n); }
extern "C" __global__ void nv12_f32(const unsigned char* yp, const unsigned char* uvp, int w, int h, int pitch, int bt709, float* dst, Geometry g, Norm n) { nv12_body<float>(yp, uvp, w, h, pitch, bt709, dst, g, n); }
extern "C" __global__ void nv12_f16(const unsigned char* yp, const unsigned char* uvp, int w, int h, int pitch, int bt709, unsigned short* dst, Geometry g, Norm n) { nv12_body<unsigned short>(yp, uvp, w, h, pitch, bt709, dst, g, n); }
"""


class _Geometry(ctypes.Structure):
    _fields_ = [
        ("dst_w", ctypes.c_int), ("dst_h", ctypes.c_int),
        ("rx", ctypes.c_int), ("ry", ctypes.c_int), ("rw", ctypes.c_int), ("rh", ctypes.c_int),
        ("off_x", ctypes.c_float), ("off_y", ctypes.c_float),
        ("scale_x", ctypes.c_float), ("scale_y", ctypes.c_float),
    ]  # fmt: skip


class _Norm(ctypes.Structure):
    _fields_ = [("a", ctypes.c_float * 3), ("b", ctypes.c_float * 3), ("pad", ctypes.c_float * 3), ("src_channel", ctypes.c_int * 3)]


@dataclass(frozen=True)
class KernelGeometry:
    """Where the resized source lands in the engine input and how it is sampled."""

    dst_w: int
    dst_h: int
    region: tuple[int, int, int, int]  # x, y, w, h
    offset: tuple[float, float]
    scale: tuple[float, float]

    def as_struct(self) -> _Geometry:
        return _Geometry(self.dst_w, self.dst_h, *self.region, *self.offset, *self.scale)


def letterbox_params(src_w: int, src_h: int, letterbox, dst_w: int, dst_h: int) -> KernelGeometry:
    """From a :class:`pipelines.imageops.Letterbox`: scale factors as ``cv2.resize`` derives them."""
    return KernelGeometry(
        dst_w, dst_h, (letterbox.pad_x, letterbox.pad_y, letterbox.new_w, letterbox.new_h), (0.0, 0.0),
        (src_w / letterbox.new_w, src_h / letterbox.new_h),
    )


def crop_params(src_w: int, src_h: int, crop, dst_w: int, dst_h: int) -> KernelGeometry:
    """From a :class:`pipelines.imageops.CropGeometry` (resize the short side, then a centre crop)."""
    return KernelGeometry(
        dst_w, dst_h, (0, 0, dst_w, dst_h), (float(crop.x), float(crop.y)), (src_w / crop.resized_w, src_h / crop.resized_h)
    )


class GpuPreprocessor:
    """Launches the preprocessing kernels; compiled once per process."""

    _module: Module | None = None

    def __init__(self, normalizer, pad_grey: int, out_dtype: np.dtype):
        if GpuPreprocessor._module is None:
            GpuPreprocessor._module = compile_module(_SOURCE, ["bgr_f32", "bgr_f16", "nv12_f32", "nv12_f16"])
        half = np.dtype(out_dtype) == np.float16
        if not half and np.dtype(out_dtype) != np.float32:
            raise ValueError(f"GPU preprocessing writes float32 or float16, not {out_dtype}")
        self._bgr = self._module["bgr_f16" if half else "bgr_f32"]
        self._nv12 = self._module["nv12_f16" if half else "nv12_f32"]
        pads = normalizer.pad_values(pad_grey)
        self._norm = _Norm(
            (ctypes.c_float * 3)(*normalizer.a), (ctypes.c_float * 3)(*normalizer.b),
            (ctypes.c_float * 3)(*pads), (ctypes.c_int * 3)(*normalizer.channels),
        )  # fmt: skip

    @staticmethod
    def _grid(geometry: KernelGeometry) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        block = (32, 8, 1)
        return ((geometry.dst_w + 31) // 32, (geometry.dst_h + 7) // 8, 1), block

    def bgr(self, stream: Stream, src_ptr: int, src_w: int, src_h: int, pitch: int, dst_ptr: int, geometry: KernelGeometry) -> None:
        grid, block = self._grid(geometry)
        self._bgr.launch(
            grid, block, stream,
            [(src_ptr, PTR), (src_w, INT), (src_h, INT), (pitch, INT), (dst_ptr, PTR), (geometry.as_struct(), _Geometry), (self._norm, _Norm)],
        )  # fmt: skip

    def nv12(self, stream: Stream, y_ptr: int, uv_ptr: int, src_w: int, src_h: int, pitch: int, bt709: bool, dst_ptr: int, geometry: KernelGeometry) -> None:
        grid, block = self._grid(geometry)
        self._nv12.launch(
            grid, block, stream,
            [(y_ptr, PTR), (uv_ptr, PTR), (src_w, INT), (src_h, INT), (pitch, INT), (int(bt709), INT), (dst_ptr, PTR),
             (geometry.as_struct(), _Geometry), (self._norm, _Norm)],
        )  # fmt: skip


