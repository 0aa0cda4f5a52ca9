"""Detection outputs decoded on the GPU, without torch: each image's best boxes, as the host wants them.

The TensorRT backend has no torch, so :meth:`pipelines.detection.DetectionPipeline.device_decode` is
not open to it; this is the same contract as one NVRTC kernel. From the raw YOLO output in device memory
(fp32 or fp16, ``[N, anchors, 5 + classes]`` or ``[N, 4 + classes, anchors]``) it writes ``[N, K, 6]``
float32 rows ``x1, y1, x2, y2, score, class`` (input pixels), each image's K = min(candidates, anchors)
best anchors by score, best first, ties to the lower anchor index. Only those ~3 KB per image come back
to the host, where :func:`pipelines.detection.decode_device_candidates` and ``postprocess_batch(...,
decoded=True)`` take them unchanged. All arithmetic is float32, also for fp16 outputs.

Design (one block of 1024 threads per image, one launch per batch, no scratch memory: capturable):

1. Score every anchor of a chunk of up to ``CAP`` anchors into shared memory as an order-preserving
   32-bit key. The output is read once, coalesced: a thread per anchor (four adjacent anchors with one
   vector load when aligned) down the class rows of the anchors-last layout; four lanes per anchor along
   the rows of the objectness layout. Each thread has several loads in flight, at offsets fixed at
   compile time.
2. Pick the K best with a radix select (MSB first, 8 bits a pass) over 64-bit composites
   ``key << 32 | (anchors - 1 - anchor)``: all distinct, so the tie rule is part of the order and the
   select finds the exact K-th composite, in four passes over shared memory when the K-th score is
   unique (six at most for 8400 anchors), where K rounds of block-wide argmax would need K (128) rounds
   of block synchronisation. Histograms are warp-aggregated (``__match_any_sync``, compute capability
   7.0+) because scores pile up in a few top bytes.
3. Gather those K into a list in shared memory, which takes part in the next chunk's select, so outputs
   with more anchors than shared memory holds (YOLOv5 at 640: 25200) work, one chunk after another.
4. Bitonic-sort the K (at most 1024) composites; eight lanes per row re-read the box and the class
   argmax (the same float32 arithmetic as the score) and write the row.

Static shared memory is kept under the 48 KB every GPU gives without opting in. Measured on an H200
(GPU time per batch, graph replays, 128 candidates), against ``device_decode`` in a torch CUDA graph:
YOLOv8-640 [N, 84, 8400] fp32 44 us at N=1 and 81 us at N=64 (torch 66 and 178); YOLOv3-tiny-416
[N, 2535, 85] 31 and 37 us (torch 40 and 172); YOLOv5-640 [N, 25200, 85] 214 and 257 us (torch 76 and
1262): a block streams one image, so one image is slower than torch's whole-GPU reductions there.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..cuda import Stream
from .nvrtc import INT, PTR, Module, compile_module

__all__ = ["DetectionDecoder", "OBJECTNESS", "ANCHORS_LAST", "MAX_CANDIDATES", "CHUNK_ANCHORS"]

# The layout names of pipelines.detection (not imported: daemon does not depend on pipelines).
OBJECTNESS = "yolo_objectness"
ANCHORS_LAST = "yolo_anchors_last"

THREADS = 1024  # per block: one block per image
CHUNK_ANCHORS = 9216  # anchors scored into shared memory at a time (CAP in the kernel; a multiple of 4)
MAX_CANDIDATES = 1024  # most rows kept per image (KMAX in the kernel; the bitonic sort's size)

_SOURCE = r"""
#define NT 1024
#define NWARPS (NT / 32)
#define CAP 9216
#define KMAX 1024
#define FULL 0xffffffffu

typedef unsigned long long u64;

__device__ __forceinline__ float h2f(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
__device__ __forceinline__ float ld(const unsigned short* p) { return h2f(__ldg(p)); }
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Order-preserving float -> uint32: a larger score, a larger key; -0 is +0 (a tie, as for torch and
// numpy). No key is 0: the sort pads with 0.
__device__ __forceinline__ unsigned to_key(float s) {
    unsigned u = __float_as_uint(s);
    if (u == 0x80000000u) u = 0u;
    return max((u & 0x80000000u) ? ~u : (u | 0x80000000u), 1u);
}
__device__ __forceinline__ float from_key(unsigned k) { return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k); }

struct Smem {
    unsigned keys[CAP];                 // this chunk's scores (anchor base + i)
    u64 list[KMAX];                     // the best so far: key << 32 | (A - 1 - anchor)
    unsigned hist[256];
    unsigned bin, above, count, fill;   // radix select's chosen bin; the gather's fill level
};

// Element i of the union of this chunk (i < n) and the list (i >= n), as a composite.
__device__ __forceinline__ u64 entry(const Smem& sm, int i, int n, int base, int A) {
    return i < n ? ((u64)sm.keys[i] << 32) | (unsigned)(A - 1 - base - i) : sm.list[i - n];
}

// The score loops load U values (per lane) for each of R anchors before using any, with offsets known
// at compile time: enough bytes in flight, and few instructions per byte (the objectness loop was issue
// bound with a run-time lane count).
#define U 8
#define R 2
#define LANES 4
#define UQ 4

// Objectness layout, rows of S = 5 + C values: LANES lanes per anchor along its row (measured on an H200
// against 1..32 lanes: 4 is the fastest for 80 classes, at 2535 and 25200 anchors, fp32 and fp16).
template <typename T>
__device__ __forceinline__ void score_rows(const T* img, Smem& sm, int base, int n, int C) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, S = 5 + C;
    const int g = lane / LANES, l = lane % LANES, step = NWARPS * (32 / LANES);
    for (int e0 = warp * (32 / LANES) + g; e0 - g < n; e0 += R * step) {   // warp-uniform: shuffles below
        const T* cls[R];                                                    // this lane's first class value
        float obj[R], best[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const T* row = img + (size_t)(base + min(e0 + r * step, n - 1)) * S;   // past the end: a row read twice
            cls[r] = row + 5 + l;
            obj[r] = ld(row + 4);
            best[r] = C > 0 ? neg_inf() : 0.f;
        }
        for (int j0 = 0; j0 + l < C; j0 += U * LANES) {                     // lane l: classes j0 + l + u * LANES
            float v[R][U];
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u) v[r][u] = j0 + l + u * LANES < C ? ld(cls[r] + j0 + u * LANES) : 0.f;
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u) if (j0 + l + u * LANES < C) best[r] = fmaxf(best[r], obj[r] * v[r][u]);
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int off = LANES / 2; off > 0; off >>= 1) best[r] = fmaxf(best[r], __shfl_xor_sync(FULL, best[r], off));
            if (e0 + r * step < n && l == 0) sm.keys[e0 + r * step] = to_key(best[r]);
        }
    }
}

// Anchors-last layout, [4 + C, A]: a thread per anchor down the class rows (coalesced across threads).
template <typename T>
__device__ __forceinline__ void score_columns(const T* img, Smem& sm, int base, int n, int A, int C) {
    for (int e = threadIdx.x; e < n; e += NT) {
        const T* p = img + (size_t)4 * A + base + e;
        float best = C > 0 ? neg_inf() : 0.f;
#pragma unroll 8
        for (int j = 0; j < C; ++j) best = fmaxf(best, ld(p + (size_t)j * A));
        sm.keys[e] = to_key(best);
    }
}

__device__ __forceinline__ void ld4(const float* p, float* v) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void ld4(const unsigned short* p, float* v) {
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
    v[0] = h2f((unsigned short)(q.x & 0xffffu)); v[1] = h2f((unsigned short)(q.x >> 16));
    v[2] = h2f((unsigned short)(q.y & 0xffffu)); v[3] = h2f((unsigned short)(q.y >> 16));
}

// The same, four adjacent anchors a thread with one 16- (fp32) or 8-byte (fp16) load per class row: when
// A % 4 == 0 and the output is 16-byte aligned (then n % 4 == 0 too, CAP being a multiple of 4).
template <typename T>
__device__ __forceinline__ void score_quads(const T* img, Smem& sm, int base, int n, int A, int C) {
    for (int q = threadIdx.x; q < n / 4; q += NT) {
        const T* p = img + (size_t)4 * A + base + 4 * q;
        float best[4], v[UQ][4];
#pragma unroll
        for (int k = 0; k < 4; ++k) best[k] = C > 0 ? neg_inf() : 0.f;
        for (int j0 = 0; j0 < C; j0 += UQ) {
#pragma unroll
            for (int u = 0; u < UQ; ++u) if (j0 + u < C) ld4(p + (size_t)(j0 + u) * A, v[u]);
#pragma unroll
            for (int u = 0; u < UQ; ++u)
                if (j0 + u < C) {
#pragma unroll
                    for (int k = 0; k < 4; ++k) best[k] = fmaxf(best[k], v[u][k]);
                }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) sm.keys[4 * q + k] = to_key(best[k]);
    }
}

// The k-th largest composite of the union of m = n + nl elements (m > k): MSB-first radix select over
// the score's 4 bytes, then over the index's ``digits`` bytes, stopping once the chosen bin is taken
// whole. Every element >= the result is in the top k, and exactly k are.
__device__ u64 select_kth(Smem& sm, int n, int nl, int base, int A, unsigned k, int digits) {
    const int tid = threadIdx.x, lane = tid & 31, m = n + nl;
    u64 prefix = 0, mask = 0;
    unsigned rem = k;
    for (int d = 0; d < 4 + digits; ++d) {
        const int shift = d < 4 ? 56 - 8 * d : 8 * (3 + digits - d);
        if (tid < 256) sm.hist[tid] = 0;
        __syncthreads();
        for (int i0 = 0; i0 < m; i0 += NT) {                           // block-uniform trip count
            const int i = i0 + tid;
            const u64 c = i < m ? entry(sm, i, n, base, A) : 0ull;
            const bool in = i < m && (c & mask) == prefix;
            if (__ballot_sync(FULL, in) == 0u) continue;                   // most warps, after the first pass
            const unsigned digit = (unsigned)(c >> shift) & 0xffu;
            const unsigned peers = __match_any_sync(FULL, in ? digit : 0x100u);
            if (in && lane == __ffs(peers) - 1) atomicAdd(&sm.hist[digit], __popc(peers));
        }
        __syncthreads();
        if (tid < 32) {                                                 // the bin where the count from the top reaches rem
            unsigned h[8], sum = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) { h[j] = sm.hist[lane * 8 + j]; sum += h[j]; }
            unsigned s = sum;                                           // suffix sum over lanes
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) { const unsigned t = __shfl_down_sync(FULL, s, off); if (lane + off < 32) s += t; }
            unsigned above = s - sum;
#pragma unroll
            for (int j = 7; j >= 0; --j) {
                if (above < rem && above + h[j] >= rem) { sm.bin = lane * 8 + j; sm.above = above; sm.count = h[j]; }
                above += h[j];
            }
        }
        __syncthreads();
        prefix |= (u64)sm.bin << shift;
        mask |= 0xffull << shift;
        rem -= sm.above;
        if (sm.count == rem) break;                                     // the whole bin is in: prefix, zeros below
    }
    return prefix;
}

// Append the lanes' composites that ``take`` to the list: one shared atomic per warp.
__device__ __forceinline__ void push(Smem& sm, bool take, u64 c) {
    const int lane = threadIdx.x & 31;
    const unsigned b = __ballot_sync(FULL, take);
    if (b == 0u) return;
    unsigned at = 0;
    if (lane == 0) at = atomicAdd(&sm.fill, (unsigned)__popc(b));
    at = __shfl_sync(FULL, at, 0) + __popc(b & ((1u << lane) - 1u));
    if (take && at < KMAX) sm.list[at] = c;
}

// The new list: the union's elements >= thr (exactly min(K, m) of them).
__device__ void gather(Smem& sm, int n, int nl, int base, int A, u64 thr) {
    const int tid = threadIdx.x;
    const u64 mine = tid < nl ? sm.list[tid] : 0ull;                    // nl <= KMAX == NT
    if (tid == 0) sm.fill = 0;
    __syncthreads();
    push(sm, tid < nl && mine >= thr, mine);
    for (int i0 = 0; i0 < n; i0 += NT) {
        const int i = i0 + tid;
        const u64 c = i < n ? entry(sm, i, n, base, A) : 0ull;
        push(sm, i < n && c >= thr, c);
    }
    __syncthreads();
}

template <typename T, bool OBJ>
__device__ __forceinline__ void decode(const T* __restrict__ src, float* __restrict__ dst, int A, int C, int K, int digits, int quads) {
    __shared__ Smem sm;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int S = OBJ ? 5 + C : 4 + C;
    const T* img = src + (size_t)blockIdx.x * S * A;
    int nl = 0;
    for (int base = 0; base < A; base += CAP) {
        const int n = min(CAP, A - base), m = n + nl;
        if (OBJ) score_rows<T>(img, sm, base, n, C);
        else if (quads) score_quads<T>(img, sm, base, n, A, C);
        else score_columns<T>(img, sm, base, n, A, C);
        __syncthreads();
        const u64 thr = m > K ? select_kth(sm, n, nl, base, A, (unsigned)K, digits) : 0ull;
        gather(sm, n, nl, base, A, thr);
        nl = min(K, m);
    }
    // Bitonic sort of the list, best first; padded with 0 (below every composite) to a power of two.
    int P = 1;
    while (P < nl) P <<= 1;
    for (int i = nl + tid; i < P; i += NT) sm.list[i] = 0ull;
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < P; i += NT) {
                const int j = i ^ stride;
                if (j > i) {
                    const u64 a = sm.list[i], b = sm.list[j];
                    if (((i & size) == 0) == (a < b)) { sm.list[i] = b; sm.list[j] = a; }
                }
            }
            __syncthreads();
        }
    }
    // Eight lanes per row, four rows a warp at a time: the class (the first argmax, in the score's
    // arithmetic) and the box, all of a row's loads issued before any is used; a row's 6 floats in one store.
    float* out = dst + (size_t)blockIdx.x * K * 6;
    const int g = lane >> 3, l = lane & 7;
    for (int r0 = warp * 4; r0 < nl; r0 += NWARPS * 4) {               // warp-uniform: shuffles below
        const int r = r0 + g;
        const u64 c = sm.list[r < nl ? r : 0];
        const int a = A - 1 - (int)(unsigned)(c & 0xffffffffull);
        const T* at = OBJ ? img + (size_t)a * S : img + a;              // value i of the anchor: at[i * stride]
        const size_t stride = OBJ ? 1 : (size_t)A;
        const float box = ld(at + (l & 3) * stride);
        const float obj = OBJ ? ld(at + 4) : 1.f;
        float best = neg_inf();
        int cls = 0x7fffffff;
#pragma unroll 4
        for (int j = l; j < C; j += 8) {
            const float v = OBJ ? obj * ld(at + 5 + j) : ld(at + (size_t)(4 + j) * A);
            if (v > best) { best = v; cls = j; }
        }
#pragma unroll
        for (int off = 4; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(FULL, best, off);
            const int oc = __shfl_xor_sync(FULL, cls, off);
            if (ov > best || (ov == best && oc < cls)) { best = ov; cls = oc; }
        }
        const int first = lane & ~7;
        const float cx = __shfl_sync(FULL, box, first), cy = __shfl_sync(FULL, box, first + 1);
        const float hw = __shfl_sync(FULL, box, first + 2) / 2.f, hh = __shfl_sync(FULL, box, first + 3) / 2.f;
        if (r < nl && l < 6) {
            const float value = l == 0 ? cx - hw : l == 1 ? cy - hh : l == 2 ? cx + hw : l == 3 ? cy + hh
                              : l == 4 ? from_key((unsigned)(c >> 32)) : (float)(cls == 0x7fffffff ? 0 : cls);
            out[(size_t)r * 6 + l] = value;
        }
    }
}

// Grid (N), block (NT). A anchors, C classes, K = min(candidates, A) rows out per image; ``digits``
// bytes of A - 1; ``quads``: the anchors-last layout may be read four anchors at a time (A % 4 == 0, src
// 16-byte aligned).
extern "C" __global__ void __launch_bounds__(NT, 1) objectness_f32(const float* src, float* dst, int A, int C, int K, int digits, int quads) {
    decode<float, true>(src, dst, A, C, K, digits, quads);
}
extern "C" __global__ void __launch_bounds__(NT, 1) objectness_f16(const unsigned short* src, float* dst, int A, int C, int K, int digits, int quads) {
    decode<unsigned short, true>(src, dst, A, C, K, digits, quads);
}
extern "C" __global__ void __launch_bounds__(NT, 1) anchors_last_f32(const float* src, float* dst, int A, int C, int K, int digits, int quads) {
    decode<float, false>(src, dst, A, C, K, digits, quads);
}
extern "C" __global__ void __launch_bounds__(NT, 1) anchors_last_f16(const unsigned short* src, float* dst, int A, int C, int K, int digits, int quads) {
    decode<unsigned short, false>(src, dst, A, C, K, digits, quads);
}
"""

KERNELS = ["objectness_f32", "objectness_f16", "anchors_last_f32", "anchors_last_f16"]


class DetectionDecoder:
    """Launches the decoding kernel; compiled once per process. ``output_shape`` is the raw output's
    per-batch shape (dim 0 is ``-1`` or N; the other two fixed); ``candidates`` the rows kept per image
    (the pipeline's ``device_candidates``); ``in_dtype`` float32 or float16."""

    _module: Module | None = None

    def __init__(self, layout: str, output_shape: Sequence[int], candidates: int, in_dtype: Any):
        if len(output_shape) != 3:
            raise ValueError(f"a detector's output is [N, a, b], not {list(output_shape)}")
        _, a, b = (int(d) for d in output_shape)
        if layout == OBJECTNESS:
            anchors, classes = a, b - 5
        elif layout == ANCHORS_LAST:
            anchors, classes = b, a - 4
        else:
            raise ValueError(f"unknown detection layout {layout!r}")
        if anchors <= 0 or classes < 0:
            raise ValueError(f"output shape {list(output_shape)} does not fit the {layout} layout (fixed anchors and classes needed)")
        if not 1 <= candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be 1..{MAX_CANDIDATES}, not {candidates}")
        dtype = np.dtype(in_dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"GPU decoding reads float32 or float16 outputs, not {dtype}")
        self.layout, self.anchors, self.classes = layout, anchors, classes
        self.candidates = min(candidates, anchors)  # K: rows per image
        if DetectionDecoder._module is None:
            DetectionDecoder._module = compile_module(_SOURCE, KERNELS)
        name = f"{'objectness' if layout == OBJECTNESS else 'anchors_last'}_{'f16' if dtype == np.float16 else 'f32'}"
        self._kernel = DetectionDecoder._module[name]
        digits = ((anchors - 1).bit_length() + 7) // 8
        self._params = [(anchors, INT), (classes, INT), (self.candidates, INT), (digits, INT)]
        self._quads = layout == ANCHORS_LAST and anchors % 4 == 0  # and, per launch, a 16-byte aligned source

    def output_shape(self, batch: int) -> tuple[int, int, int]:
        """``[batch, K, 6]``: rows x1, y1, x2, y2, score, class (float32)."""
        return (batch, self.candidates, 6)

    def reduced_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The decoded shape of a raw output of ``shape`` (as :meth:`DetectionPipeline.reduced_shape`)."""
        return (shape[0], self.candidates, 6)

    def output_bytes(self, batch: int) -> int:
        return batch * self.candidates * 6 * 4

    def launch(self, stream: Stream, src_ptr: int, dst_ptr: int, rows: int) -> None:
        """Enqueue the decoding of batch rows ``0..rows-1`` of the raw output at ``src_ptr`` (C-contiguous)
        into ``dst_ptr`` (``output_bytes(rows)``): one launch, no synchronisation, no allocation."""
        if rows < 0:
            raise ValueError(f"rows must be >= 0, not {rows}")
        if rows == 0:
            return
        quads = int(self._quads and src_ptr % 16 == 0)
        self._kernel.launch((rows, 1, 1), (THREADS, 1, 1), stream, [(src_ptr, PTR), (dst_ptr, PTR), *self._params, (quads, INT)])

