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
from .nvrtc import PTR, Module, compile_module

__all__ = ["KernelGeometry", "GpuPreprocessor", "Job", "letterbox_params", "crop_params"]

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

struct Job {                          // one batch row: where its frame is and how to sample it
    unsigned long long src;           // BGR: packed HWC uint8; NV12: the luma plane
    unsigned long long uv;            // NV12: the interleaved chroma plane (unused for BGR)
    int src_w, src_h, pitch, format;  // format: 0 BGR, 1 NV12 BT.601, 2 NV12 BT.709 (limited range)
    Geometry g;
};

// NV12 (Y plane, then interleaved UV at half resolution), limited range -> BGR.
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

// One source pixel as B, G, R floats, whatever the frame's format.
__device__ __forceinline__ void fetch(const Job& j, int x, int y, float* bgr) {
    if (j.format == 0) {
        const unsigned char* p = (const unsigned char*)j.src + (size_t)y * j.pitch + x * 3;
        bgr[0] = p[0]; bgr[1] = p[1]; bgr[2] = p[2];
    } else {
        nv12_bgr((const unsigned char*)j.src, (const unsigned char*)j.uv, j.pitch, x, y, j.format == 2, bgr);
    }
}

template <typename T>
__device__ __forceinline__ void body(const Job& j, T* __restrict__ dst, const Norm& n) {
    const Geometry& g = j.g;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= g.dst_w || y >= g.dst_h) return;
    size_t plane = (size_t)g.dst_w * g.dst_h, o = (size_t)y * g.dst_w + x;
    if (x < g.rx || x >= g.rx + g.rw || y < g.ry || y >= g.ry + g.rh) {
        for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, n.pad[c]);
        return;
    }
    int x0, x1, y0, y1; float wx, wy;
    axis((float)(x - g.rx) + g.off_x, g.scale_x, j.src_w, x0, x1, wx);
    axis((float)(y - g.ry) + g.off_y, g.scale_y, j.src_h, y0, y1, wy);
    float p00[3], p01[3], p10[3], p11[3], px[3];
    fetch(j, x0, y0, p00); fetch(j, x1, y0, p01); fetch(j, x0, y1, p10); fetch(j, x1, y1, p11);
    for (int s = 0; s < 3; ++s)   // cv2.resize's order of operations, rounded to 8 bits as it does
        px[s] = rintf((p00[s] * (1.f - wx) + p01[s] * wx) * (1.f - wy) + (p10[s] * (1.f - wx) + p11[s] * wx) * wy);
    for (int c = 0; c < 3; ++c) put<T>(dst, c * plane + o, px[n.src_channel[c]] * n.a[c] + n.b[c]);
}

// A whole batch in one launch: grid.z is the batch row, ``jobs`` the rows' table in device memory.
extern "C" __global__ void batch_f32(const Job* __restrict__ jobs, float* dst, unsigned long long row_elems, Norm n) {
    const Job j = jobs[blockIdx.z]; body<float>(j, dst + blockIdx.z * row_elems, n);
}
extern "C" __global__ void batch_f16(const Job* __restrict__ jobs, unsigned short* dst, unsigned long long row_elems, Norm n) {
    const Job j = jobs[blockIdx.z]; body<unsigned short>(j, dst + blockIdx.z * row_elems, n);
}
// One frame, its job passed by value (tests, tools).
extern "C" __global__ void one_f32(Job j, float* dst, Norm n) { body<float>(j, dst, n); }
extern "C" __global__ void one_f16(Job j, unsigned short* dst, Norm n) { body<unsigned short>(j, dst, n); }
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


class Job(ctypes.Structure):
    """One batch row of the batched kernel (the C ``Job``): 72 bytes, laid out as C lays it out."""

    _fields_ = [
        ("src", ctypes.c_uint64), ("uv", ctypes.c_uint64),
        ("src_w", ctypes.c_int), ("src_h", ctypes.c_int), ("pitch", ctypes.c_int), ("format", ctypes.c_int),
        ("g", _Geometry),
    ]  # fmt: skip

    @classmethod
    def bgr(cls, src_ptr: int, src_w: int, src_h: int, pitch: int, geometry: KernelGeometry) -> "Job":
        return cls(src_ptr, 0, src_w, src_h, pitch, FORMAT_BGR, geometry.as_struct())

    @classmethod
    def nv12(cls, y_ptr: int, uv_ptr: int, src_w: int, src_h: int, pitch: int, bt709: bool, geometry: KernelGeometry) -> "Job":
        return cls(y_ptr, uv_ptr, src_w, src_h, pitch, FORMAT_NV12_709 if bt709 else FORMAT_NV12_601, geometry.as_struct())


FORMAT_BGR, FORMAT_NV12_601, FORMAT_NV12_709 = 0, 1, 2


class GpuPreprocessor:
    """Launches the preprocessing kernel; compiled once per process. The pipeline path is :meth:`batch`:
    one launch for a whole batch, every row described by a :class:`Job` in a table the caller has put in
    device memory (the torch backend copies it with the frames, in the same host->device copy)."""

    _module: Module | None = None

    def __init__(self, normalizer, pad_grey: int, out_dtype: np.dtype):
        if GpuPreprocessor._module is None:
            GpuPreprocessor._module = compile_module(_SOURCE, ["batch_f32", "batch_f16", "one_f32", "one_f16"])
        half = np.dtype(out_dtype) == np.float16
        if not half and np.dtype(out_dtype) != np.float32:
            raise ValueError(f"GPU preprocessing writes float32 or float16, not {out_dtype}")
        self._batch = self._module["batch_f16" if half else "batch_f32"]
        self._one = self._module["one_f16" if half else "one_f32"]
        self._element = 2 if half else 4
        pads = normalizer.pad_values(pad_grey)
        self._norm = _Norm(
            (ctypes.c_float * 3)(*normalizer.a), (ctypes.c_float * 3)(*normalizer.b),
            (ctypes.c_float * 3)(*pads), (ctypes.c_int * 3)(*normalizer.channels),
        )  # fmt: skip

    @staticmethod
    def _grid(dst_w: int, dst_h: int, rows: int = 1) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return ((dst_w + 31) // 32, (dst_h + 7) // 8, rows), (32, 8, 1)

    def batch(self, stream: Stream, jobs_ptr: int, rows: int, dst_ptr: int, dst_w: int, dst_h: int) -> None:
        """Rows ``0..rows-1`` of the input tensor at ``dst_ptr`` from the job table at ``jobs_ptr``."""
        grid, block = self._grid(dst_w, dst_h, rows)
        self._batch.launch(
            grid, block, stream,
            [(jobs_ptr, PTR), (dst_ptr, PTR), (3 * dst_w * dst_h, ctypes.c_uint64), (self._norm, _Norm)],
        )  # fmt: skip

    def one(self, stream: Stream, job: Job, dst_ptr: int) -> None:
        grid, block = self._grid(job.g.dst_w, job.g.dst_h)
        self._one.launch(grid, block, stream, [(job, Job), (dst_ptr, PTR), (self._norm, _Norm)])

    def bgr(self, stream: Stream, src_ptr: int, src_w: int, src_h: int, pitch: int, dst_ptr: int, geometry: KernelGeometry) -> None:
        """One BGR frame already in device memory."""
        self.one(stream, Job.bgr(src_ptr, src_w, src_h, pitch, geometry), dst_ptr)

    def nv12(self, stream: Stream, y_ptr: int, uv_ptr: int, src_w: int, src_h: int, pitch: int, bt709: bool, dst_ptr: int, geometry: KernelGeometry) -> None:
        """One NV12 frame already in device memory."""
        self.one(stream, Job.nv12(y_ptr, uv_ptr, src_w, src_h, pitch, bt709, geometry), dst_ptr)
