"""The serving path's CUDA enqueues, made without giving up Python's GIL (``ctypes.PyDLL`` on libcuda).

Why not cuda-bindings for these five calls: every cuda-bindings call releases the GIL and takes it back.
That is right for a call that may block (a synchronize, a query loop) and wrong for one that only queues
work and returns in microseconds. With a hundred Python threads (a reader per camera, the publisher, the
completer) the thread that gave the GIL up waits to get it back until whoever took it lets go — up to the
interpreter's switch interval, 5 ms, per call — and a batch of 32 frames makes about 37 such calls (a copy
per frame, the job table, two kernel launches, the model's graph, the copy back, the event). Measured on the
H200 (docs/benchmarks.md): the batcher used 20–35 µs of CPU per result and spent 52–93 % of its wall time in
``submit``. A ``PyDLL`` function keeps the GIL for the call; each of these returns at once as long as its
host memory is pinned (an "async" copy from pageable memory is synchronous), which is all the device
runtime hands them. Streams opt in (:class:`daemon.cuda.Stream` ``hold_gil``), so everything else keeps
cuda-bindings' behaviour.

Handles are plain ints (cuda-bindings' ``CUstream``/``cudaStream_t`` and friends convert with ``int()``;
the runtime's handles are the driver's). The calls need the calling thread to have a current context,
which any runtime call on that thread (``cudaSetDevice``) leaves behind; :func:`daemon.cuda.ensure_context`
makes sure once per thread.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from .errors import BackendError

__all__ = ["LOADER", "available", "unavailable_reason", "memcpy_htod", "memcpy_dtoh", "memcpy2d_dtod", "Memcpy2D", "launch_kernel",
           "event_record", "event_query", "stream_wait_event", "graph_launch"]

LOADER = ctypes.PyDLL  # functions called with the GIL held (ctypes.CDLL's release it)
_LIBRARY = "libcuda.so.1"

_u64, _uint, _ptr, _size = ctypes.c_uint64, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t
_MEMORYTYPE_DEVICE = 2  # CU_MEMORYTYPE_DEVICE
_NOT_READY = 600  # CUDA_ERROR_NOT_READY: what cuEventQuery answers while the work is still running


class Memcpy2D(ctypes.Structure):
    """The driver's ``CUDA_MEMCPY2D`` (cuda.h), for device-to-device copies. A caller keeps one per thread
    and sets only the addresses per copy (:func:`memcpy2d_dtod`): the driver reads it during the call."""

    _fields_ = [
        ("srcXInBytes", _size), ("srcY", _size), ("srcMemoryType", ctypes.c_int), ("srcHost", _ptr), ("srcDevice", _u64),
        ("srcArray", _ptr), ("srcPitch", _size),
        ("dstXInBytes", _size), ("dstY", _size), ("dstMemoryType", ctypes.c_int), ("dstHost", _ptr), ("dstDevice", _u64),
        ("dstArray", _ptr), ("dstPitch", _size),
        ("WidthInBytes", _size), ("Height", _size),
    ]  # fmt: skip


_SIGNATURES: dict[str, tuple[Any, ...]] = {
    "cuMemcpyHtoDAsync_v2": (_u64, _ptr, _size, _ptr),
    "cuMemcpyDtoHAsync_v2": (_ptr, _u64, _size, _ptr),
    "cuLaunchKernel": (_ptr, _uint, _uint, _uint, _uint, _uint, _uint, _uint, _ptr, _ptr, _ptr),
    "cuMemcpy2DAsync_v2": (ctypes.POINTER(Memcpy2D), _ptr),
    "cuEventRecord": (_ptr, _ptr),
    "cuEventQuery": (_ptr,),
    "cuStreamWaitEvent": (_ptr, _ptr, _uint),
    "cuGraphLaunch": (_ptr, _ptr),
    "cuGetErrorName": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
}

_lock = threading.Lock()
_functions: dict[str, Any] | None = None
_load_error: str | None = None
_thread = threading.local()


class CudaEnqueueError(BackendError):
    """A driver call on the GIL-holding path failed (the message names the call and CUDA's error)."""


def _load() -> dict[str, Any] | None:
    global _functions, _load_error
    if _functions is not None or _load_error is not None:
        return _functions
    with _lock:
        if _functions is None and _load_error is None:
            try:
                library = LOADER(_LIBRARY)
                bound = {}
                for name, argtypes in _SIGNATURES.items():
                    function = getattr(library, name)
                    function.argtypes, function.restype = list(argtypes), ctypes.c_int
                    bound[name] = function
                _functions = bound
            except (OSError, AttributeError) as exc:
                _load_error = str(exc)
    return _functions


def available() -> bool:
    """Whether the driver library could be bound (a machine with an NVIDIA driver)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _load_error


def _bind_context() -> None:
    """The first call on a thread: make a context current there (:func:`daemon.cuda.ensure_context`;
    imported here, not at the top, because :mod:`daemon.cuda` imports this module)."""
    from .cuda import ensure_context

    ensure_context()
    _thread.ready = True


def _call(name: str, *args: Any, allowed: int = 0) -> int:
    """The call's CUDA result: 0, or ``allowed`` (a status that is an answer, not an error)."""
    functions = _functions if _functions is not None else _load()
    if functions is None:
        raise CudaEnqueueError(f"{_LIBRARY} cannot be loaded: {_load_error}")
    if not getattr(_thread, "ready", False):
        _bind_context()
    result = functions[name](*args)
    if result != 0 and result != allowed:
        text = ctypes.c_char_p()
        functions["cuGetErrorName"](result, ctypes.byref(text))
        raise CudaEnqueueError(f"{name} failed: {(text.value or b'CUDA error').decode()} ({result})")
    return result


def memcpy_htod(dst: int, src: int, nbytes: int, stream: int) -> None:
    _call("cuMemcpyHtoDAsync_v2", dst, src, nbytes, stream)


def memcpy_dtoh(dst: int, src: int, nbytes: int, stream: int) -> None:
    _call("cuMemcpyDtoHAsync_v2", dst, src, nbytes, stream)


def memcpy2d_dtod(params: Memcpy2D, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int, stream: int) -> None:
    """A pitched device-to-device copy through ``params`` (the caller's own, reused: no allocation per copy)."""
    params.srcMemoryType = params.dstMemoryType = _MEMORYTYPE_DEVICE
    params.srcDevice, params.srcPitch, params.dstDevice, params.dstPitch = src, src_pitch, dst, dst_pitch
    params.WidthInBytes, params.Height = width, rows
    _call("cuMemcpy2DAsync_v2", ctypes.byref(params), stream)


def launch_kernel(function: int, grid: tuple[int, int, int], block: tuple[int, int, int], stream: int, params: int, shared: int = 0) -> None:
    _call("cuLaunchKernel", function, *grid, *block, shared, stream, params, None)


def event_record(event: int, stream: int) -> None:
    _call("cuEventRecord", event, stream)


def event_query(event: int) -> bool:
    """Whether the work recorded before ``event`` is done (never waits)."""
    return _call("cuEventQuery", event, allowed=_NOT_READY) == 0


def stream_wait_event(stream: int, event: int) -> None:
    """Work queued on ``stream`` after this waits, on the GPU, for ``event``'s recorded work (the host never waits)."""
    _call("cuStreamWaitEvent", stream, event, 0)


def graph_launch(graph_exec: int, stream: int) -> None:
    _call("cuGraphLaunch", graph_exec, stream)
