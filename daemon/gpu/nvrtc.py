"""Compile CUDA C at run time with NVRTC and launch it on our own streams (cuda-python's driver API).

Kernels are compiled once per process for the GPU's own architecture (no nvcc at install time, no
fat binaries to ship), loaded with ``cuModuleLoadData`` into the runtime's primary context, and
launched with ``cuLaunchKernel`` on a :class:`daemon.cuda.Stream`, so they order naturally with the
copies and the inference on that stream.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Sequence

from .. import cuda_enqueue
from ..cuda import CudaError, Stream, cuda_call, device_properties, ensure_context

__all__ = ["compile_ptx", "compile_module", "Module", "Kernel"]


def _driver() -> Any:
    from cuda.bindings import driver

    return driver


def _nvrtc() -> Any:
    from cuda.bindings import nvrtc

    return nvrtc


def _nvrtc_call(result: Any, what: str, program: Any = None) -> Any:
    nvrtc = _nvrtc()
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if program is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            buffer = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = buffer.decode(errors="replace").strip()
        raise CudaError(f"{what} failed: {err}{': ' + log if log else ''}")
    return values[0] if len(values) == 1 else (values or None)


@dataclass
class Kernel:
    name: str
    function: Any

    def __post_init__(self) -> None:
        self.handle = int(self.function)  # the CUfunction as the GIL-holding launch takes it

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], stream: Stream, args: Sequence[tuple[Any, Any]]) -> None:
        """``args``: (value, ctypes type) pairs in the kernel's parameter order; a value may already be a
        ctypes object (a Structure passed by value). The driver copies the parameters at launch."""
        ensure_context()
        driver = _driver()
        holders = [value if isinstance(value, (ctypes._SimpleCData, ctypes.Structure)) else kind(value) for value, kind in args]
        pointers = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        if stream.hold_gil:
            cuda_enqueue.launch_kernel(self.handle, grid, block, stream.handle, ctypes.addressof(pointers))
            return
        cuda_call(
            driver.cuLaunchKernel(self.function, *grid, *block, 0, driver.CUstream(stream.handle), ctypes.addressof(pointers), 0),
            f"cuLaunchKernel({self.name})",
        )


class Module:
    """A compiled, loaded CUDA module."""

    def __init__(self, image: bytes, names: Sequence[str]):
        ensure_context()
        driver = _driver()
        self._module = cuda_call(driver.cuModuleLoadData(image), "cuModuleLoadData")
        self.kernels = {
            name: Kernel(name, cuda_call(driver.cuModuleGetFunction(self._module, name.encode()), f"cuModuleGetFunction({name})"))
            for name in names
        }

    def __getitem__(self, name: str) -> Kernel:
        return self.kernels[name]


def compile_ptx(source: str, arch: str, options: Sequence[str] = ()) -> bytes:
    """``source`` as PTX for ``arch`` (e.g. "compute_75"). Needs NVRTC only, no GPU and no driver, so the
    kernels' sources are also checked on machines without one (tests/test_kernel_sources_compile.py)."""
    nvrtc = _nvrtc()
    program = _nvrtc_call(nvrtc.nvrtcCreateProgram(source.encode(), b"trtstream.cu", 0, [], []), "nvrtcCreateProgram")
    flags = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", *(o.encode() for o in options)]
    try:
        _nvrtc_call(nvrtc.nvrtcCompileProgram(program, len(flags), flags), "nvrtcCompileProgram", program)
        size = _nvrtc_call(nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
        ptx = b" " * size
        _nvrtc_call(nvrtc.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return ptx


def compile_module(source: str, names: Sequence[str], options: Sequence[str] = ()) -> Module:
    """Compile ``source`` for this GPU (PTX for its compute capability, JIT-loaded by the driver)."""
    major, minor = device_properties(0)["compute_capability"].split(".")
    return Module(compile_ptx(source, f"compute_{major}{minor}", options), names)


# Convenience ctypes aliases for kernel arguments.
PTR = ctypes.c_void_p
INT = ctypes.c_int
FLOAT = ctypes.c_float
