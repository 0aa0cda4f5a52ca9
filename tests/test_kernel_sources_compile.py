"""The NVRTC kernels' CUDA C compiles on any machine: NVRTC makes PTX for a named architecture with no
GPU and no driver. Each source in daemon/gpu is compiled for Turing (compute_75, the oldest CUDA 13
compiles for), Jetson Orin (compute_87) and Hopper (compute_90); its PTX must hold the kernels the Python
side looks up, and the decoder its launch bound and at most 48 KB of static shared memory (what a launch
gets without opting in). Skipped, with the reason, where NVRTC is missing: it comes as NVIDIA's wheels,
``cuda-bindings`` with ``nvidia-cuda-nvrtc`` (CUDA 13) or ``nvidia-cuda-nvrtc-cu12`` (CUDA 12).

The decoder's argument checks run before anything is compiled, so they are tested here too, everywhere."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest


def _nvrtc_reason() -> str | None:
    try:
        from cuda.bindings import nvrtc

        result = nvrtc.nvrtcVersion()
    except Exception as exc:  # no cuda-bindings, or no libnvrtc for it to load
        return f"NVRTC unavailable (pip install cuda-bindings nvidia-cuda-nvrtc): {type(exc).__name__}: {exc}"
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return f"nvrtcVersion failed: {result[0]}"
    return None


# CI installs NVRTC for this file alone and sets TRTSTREAM_REQUIRE_NVRTC=1 (.ci/run): there a missing NVRTC fails.
needs_nvrtc = pytest.mark.skipif(
    _nvrtc_reason() is not None and not os.environ.get("TRTSTREAM_REQUIRE_NVRTC"), reason=str(_nvrtc_reason())
)

ARCHES = ["compute_75", "compute_87", "compute_90"]


def _sources() -> dict[str, tuple[str, list[str]]]:
    from daemon.gpu import decode, preprocess

    return {
        "preprocess": (preprocess._SOURCE, ["batch_f32", "batch_f16", "one_f32", "one_f16"]),
        "decode": (decode._SOURCE, decode.KERNELS),
    }


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", ["preprocess", "decode"])
def test_the_kernel_source_compiles_to_ptx(name, arch):
    from daemon.gpu.nvrtc import compile_ptx

    source, kernels = _sources()[name]
    ptx = compile_ptx(source, arch).decode()
    assert f".target sm_{arch.removeprefix('compute_')}" in ptx
    assert sorted(re.findall(r"\.entry (\w+)\(", ptx)) == sorted(kernels)
    if name == "decode":
        shared = [int(size) for size in re.findall(r"\.shared \.align \d+ \.b8 \S+\[(\d+)\]", ptx)]
        assert len(shared) == len(kernels) and max(shared) <= 48 * 1024, shared
        assert ptx.count(".maxntid 1024, 1, 1") == len(kernels)


@needs_nvrtc
def test_a_compile_error_carries_the_nvrtc_log():
    from daemon.cuda import CudaError
    from daemon.gpu.nvrtc import compile_ptx

    with pytest.raises(CudaError, match="no_such_function"):
        compile_ptx('extern "C" __global__ void k() { no_such_function(); }', "compute_75")


@pytest.mark.parametrize(
    "layout,shape,candidates,dtype",
    [
        ("yolo_nas", (-1, 8400, 84), 128, np.float32),  # no such layout
        ("yolo_objectness", (-1, 8400), 128, np.float32),  # not [N, a, b]
        ("yolo_objectness", (-1, -1, 85), 128, np.float32),  # dynamic anchors
        ("yolo_objectness", (-1, 8400, 4), 128, np.float32),  # fewer than 5 values a row
        ("yolo_anchors_last", (-1, 84, 8400), 0, np.float32),
        ("yolo_anchors_last", (-1, 84, 8400), 1025, np.float32),  # over the bitonic sort's 1024
        ("yolo_anchors_last", (-1, 84, 8400), 128, np.int8),
    ],
)
def test_the_decoder_refuses_what_it_cannot_decode_before_compiling(layout, shape, candidates, dtype):
    from daemon.gpu.decode import DetectionDecoder

    with pytest.raises(ValueError):
        DetectionDecoder(layout, shape, candidates, dtype)


def test_the_decoder_s_layout_names_are_the_pipeline_s():
    from daemon.gpu import decode
    from pipelines import detection

    assert (decode.OBJECTNESS, decode.ANCHORS_LAST) == (detection.OBJECTNESS, detection.ANCHORS_LAST)
