"""The little CUDA the TensorRT backend needs, on cuda-python's low-level runtime bindings.

Shaped like NVIDIA's ``samples/python/common_runtime.py``: one small class per resource
(:class:`PinnedBuffer`, :class:`DeviceBuffer`, :class:`Stream`, :class:`Event`), each freeing it in an
idempotent ``close()`` and usable as a context manager, and one error-check choke point,
:func:`cuda_call`, through which every cuda-bindings call goes. Everything is allocated once (per slot,
at start) and reused: nothing here is created per frame or per batch.

cuda-python (``cuda-bindings``, the ``gpu`` extra) is optional: it is imported inside the functions, so
importing this module never fails; :func:`cuda_available` says whether CUDA can be used on this machine.
The device is the calling thread's current device: :func:`set_device` (``cudaSetDevice``) chooses it,
per thread, as the GPU runtime does on each thread that enqueues work.

Written against cuda-bindings 12.9/13.x (``from cuda.bindings import runtime``; the old ``from cuda
import cudart`` was removed in 13.0). Every call returns a tuple whose first item is a ``cudaError_t``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
from typing import Any

import numpy as np

from . import cuda_enqueue
from .errors import BackendError

__all__ = [
    "CudaError",
    "cuda_call",
    "cuda_available",
    "device_properties",
    "cuda_versions",
    "PinnedBuffer",
    "DeviceBuffer",
    "ImportedDeviceMemory",
    "ipc_memory_handle",
    "Stream",
    "Event",
    "memcpy_htod_async",
    "memcpy_htod_batch_async",
    "memcpy_batch_supported",
    "memcpy_dtoh_async",
    "memcpy2d_dtod_async",
    "primary_context_handle",
    "set_device",
    "ensure_context",
    "CudaGraph",
    "capture_graph",
    "driver_cuda_version",
    "bindings_version",
    "bindings_driver_mismatch",
    "cuda_mismatch",
    "bindings_fit_driver",
]

# Flag values from driver_types.h, used only if a cuda-bindings release lacks the module constant.
_EVENT_BLOCKING_SYNC = 0x01
_EVENT_DISABLE_TIMING = 0x02
_STREAM_NON_BLOCKING = 0x01

_cudart: Any = None


class CudaError(BackendError):
    """A CUDA runtime call failed (or cuda-python is missing). ``code`` is the ``cudaError_t`` value."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


def _runtime() -> Any:
    """``cuda.bindings.runtime``, imported on first use."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            raise CudaError(
                "cuda-python is not installed: pip install cuda-bindings with the CUDA major of your TensorRT wheel "
                "(cu12 or cu13): pip install 'trtstream[gpu-cu12]' or 'trtstream[gpu-cu13]'"
            ) from None
        _cudart = runtime
    return _cudart


def _error_name(err: Any) -> str:
    try:
        status, name = _runtime().cudaGetErrorName(err)
        if int(status) == 0 and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # not a cudaError_t (a driver CUresult, say), or cuda-python half broken
        pass
    return getattr(err, "name", None) or f"CUDA error {int(err)}"


def cuda_call(result: Any, what: str = "") -> Any:
    """Check one cuda-bindings result ``(err, *values)``: return the values (None, one value or a tuple)
    or raise :class:`CudaError` naming the error (``cudaErrorMemoryAllocation``, ...) and ``what`` was called."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        name = _error_name(err)
        raise CudaError(f"{what or 'CUDA call'} failed: {name} ({code})", code)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed driver supports, e.g. (12, 6) on JetPack 6, read from
    libcuda itself through ctypes, so the answer does not depend on cuda-python being the right one.
    None when there is no driver (a CPU machine)."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            libcuda = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return version.value // 1000, (version.value % 1000) // 10
    return None


def bindings_version() -> str | None:
    """The installed cuda-bindings (or older cuda-python) version, without importing it."""
    from importlib import metadata

    for distribution in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def bindings_driver_mismatch(bindings: str | None, driver: tuple[int, int] | None) -> str | None:
    """One line when cuda-bindings ``bindings`` cannot run on a driver that supports CUDA ``driver``, else None.

    Drivers run every older CUDA major, so only bindings newer than the driver fail: cuda-bindings 13
    needs a CUDA 13 driver (R580+), and JetPack 6's driver is CUDA 12.6. The extras are per major
    (``trtstream[gpu-cu12]``, ``trtstream[gpu-cu13]``), since ``cuda-python>=12.6`` alone resolves to 13.
    """
    if bindings is None or driver is None:
        return None
    try:
        major = int(bindings.split(".", 1)[0])
    except ValueError:
        return None
    if major <= driver[0]:
        return None
    return (
        f"cuda-bindings {bindings} needs a CUDA {major} driver, but this machine's driver supports CUDA "
        f"{driver[0]}.{driver[1]}: pip install 'trtstream[gpu-cu{driver[0]}]' (cuda-python {driver[0]}.x)"
    )


@functools.cache
def cuda_mismatch() -> str | None:
    """:func:`bindings_driver_mismatch` for this machine, computed once."""
    return bindings_driver_mismatch(bindings_version(), driver_cuda_version())


@functools.cache
def _warn_once(line: str) -> None:
    logging.getLogger("trtstream.cuda").warning("CUDA unusable: %s", line)


def bindings_fit_driver() -> bool:
    """False, with one warning line logged once, when cuda-bindings is newer than the driver: otherwise
    ``engine.backend = "auto"`` would quietly fall back to the CPU, or fail in the first CUDA call."""
    mismatch = cuda_mismatch()
    if mismatch is not None:
        _warn_once(mismatch)
        return False
    return True


def cuda_available() -> bool:
    """Whether cuda-python is installed, fits the driver, and a CUDA driver with at least one GPU
    answers. Never raises."""
    if not bindings_fit_driver():
        return False
    try:
        count = cuda_call(_runtime().cudaGetDeviceCount(), "cudaGetDeviceCount")
    except Exception:
        # Without a driver, cuda-bindings 13 may raise instead of returning an error code (cuda-pathfinder's
        # DynamicLibNotFoundError, a RuntimeError from the loader); missing cuda-python is a CudaError.
        return False
    return int(count) > 0


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value).strip()


def _uuid(props: Any) -> str | None:
    """nvidia-smi's form, GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, or None if this cuda-bindings lacks it."""
    try:
        raw = props.uuid.bytes
        raw = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
        h = raw[:16].hex()
    except Exception:
        return None
    if len(h) != 32:
        return None
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def device_properties(index: int = 0) -> dict[str, Any]:
    """Name, compute capability ("9.0"), total memory in bytes and UUID of GPU ``index``."""
    props = cuda_call(_runtime().cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    return {
        "index": index,
        "name": _text(props.name),
        "compute_capability": f"{int(props.major)}.{int(props.minor)}",
        "total_memory": int(props.totalGlobalMem),
        "uuid": _uuid(props),
    }


def _version(value: int) -> str:
    # CUDA encodes 12.8 as 12080: 1000 * major + 10 * minor.
    return f"{value // 1000}.{(value % 1000) // 10}"


def cuda_versions() -> dict[str, str]:
    """CUDA runtime and driver versions, e.g. {"runtime": "13.0", "driver": "13.1"}."""
    cudart = _runtime()
    runtime = cuda_call(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    driver = cuda_call(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    return {"runtime": _version(int(runtime)), "driver": _version(int(driver))}


class _Resource:
    """Owns one CUDA resource: ``close()`` frees it once; also a context manager."""

    _closed = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._free()

    def _free(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, CUDA already torn down: nothing useful to do
            pass


class _OwnedArray(np.ndarray):
    """A numpy view of pinned memory that keeps the :class:`PinnedBuffer` it views alive (so does every
    slice or ``.view`` of it). Closing the buffer explicitly still frees the memory: don't use views after."""

    _owner: Any = None

    def __array_finalize__(self, obj: Any) -> None:
        if obj is not None:
            self._owner = getattr(obj, "_owner", None)


class PinnedBuffer(_Resource):
    """Page-locked host memory (``cudaMallocHost``): what async copies need to be really asynchronous."""

    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ValueError(f"PinnedBuffer needs a positive size, got {nbytes}")
        cudart = _runtime()
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_call(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes} bytes)"))
        self._closed = False

    def array(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A ``shape`` array of ``dtype`` over the start of this buffer. Built as bytes, then ``.view(dtype)``
        (so float16 or any other dtype works); the view keeps this buffer alive."""
        if self._closed:
            raise CudaError("PinnedBuffer.array: the buffer is closed")
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"{shape} of {dtype} needs {nbytes} bytes; the buffer has {self.nbytes}")
        if nbytes == 0:
            return np.empty(shape, dtype)
        raw = (ctypes.c_ubyte * nbytes).from_address(self.ptr)
        view = np.ctypeslib.as_array(raw).view(_OwnedArray)
        view._owner = self
        return view.view(dtype).reshape(shape)

    def _free(self) -> None:
        cuda_call(_runtime().cudaFreeHost(self.ptr), "cudaFreeHost")


class HostRegistration(_Resource):
    """Host memory that is not CUDA's page-locked in place (``cudaHostRegister``): shared memory a decoding
    process writes frames into, which the GPU then copies from asynchronously like a :class:`PinnedBuffer`.
    Keeps ``array`` alive; unregistered at :meth:`close`, before the memory may go."""

    def __init__(self, array: np.ndarray):
        self.ptr = int(array.ctypes.data)
        self.nbytes = int(array.nbytes)
        self._array = array
        cuda_call(_runtime().cudaHostRegister(self.ptr, self.nbytes, 0), f"cudaHostRegister({self.nbytes} bytes)")
        self._closed = False

    def _free(self) -> None:
        cuda_call(_runtime().cudaHostUnregister(self.ptr), "cudaHostUnregister")
        self._array = None


class DeviceBuffer(_Resource):
    """Device memory (``cudaMalloc``; 256-byte aligned, as TensorRT wants). ``ptr`` is the address as an int."""

    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ValueError(f"DeviceBuffer needs a positive size, got {nbytes}")
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_call(_runtime().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))
        self._closed = False

    def _free(self) -> None:
        cuda_call(_runtime().cudaFree(self.ptr), "cudaFree")


IPC_HANDLE_BYTES = 64  # CUDA_IPC_HANDLE_SIZE


def ipc_memory_handle(buffer: DeviceBuffer) -> bytes:
    """``buffer`` exported for another process of this machine (``cudaIpcGetMemHandle``): 64 opaque bytes
    that :class:`ImportedDeviceMemory` opens there. The memory stays this process's: it outlives the
    importer, and it is freed here only once the importer is gone."""
    handle = cuda_call(_runtime().cudaIpcGetMemHandle(buffer.ptr), "cudaIpcGetMemHandle")
    return ctypes.string_at(handle.getPtr(), IPC_HANDLE_BYTES)


class ImportedDeviceMemory(_Resource):
    """Device memory another process exported (:func:`ipc_memory_handle`), mapped into this one
    (``cudaIpcOpenMemHandle``); ``ptr`` is its address here. Not on Jetson, whose CUDA has no IPC."""

    def __init__(self, handle: bytes):
        if len(handle) != IPC_HANDLE_BYTES:
            raise CudaError(f"an IPC memory handle has {IPC_HANDLE_BYTES} bytes, not {len(handle)}")
        cudart = _runtime()
        raw = cudart.cudaIpcMemHandle_t()
        ctypes.memmove(raw.getPtr(), handle, IPC_HANDLE_BYTES)
        flags = getattr(cudart, "cudaIpcMemLazyEnablePeerAccess", 1)
        self.ptr = int(cuda_call(cudart.cudaIpcOpenMemHandle(raw, flags), "cudaIpcOpenMemHandle"))
        self._closed = False

    def _free(self) -> None:
        cuda_call(_runtime().cudaIpcCloseMemHandle(self.ptr), "cudaIpcCloseMemHandle")


def _native_handle(obj: Any) -> int:
    """The address behind a cuda-bindings handle object. ``int(obj)`` is deprecated since cuda-bindings 12.9.1."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    try:
        return int(get_cuda_native_handle(obj))
    except TypeError:  # a type this release registers no getter for
        return int(obj)


class Stream(_Resource):
    """A non-blocking CUDA stream (no implicit sync with the legacy default stream).

    ``raw`` is the ``cudaStream_t`` for cuda-bindings calls; ``handle`` the int TensorRT's
    ``execute_async_v3`` takes. With ``hold_gil`` the enqueues on this stream (copies, kernel launches,
    graph launches, event records) keep Python's GIL (:mod:`daemon.cuda_enqueue` says why); it stays
    False where the driver library cannot be bound that way. Only for work whose host memory is pinned."""

    def __init__(self, hold_gil: bool = False) -> None:
        cudart = _runtime()
        flags = getattr(cudart, "cudaStreamNonBlocking", _STREAM_NON_BLOCKING)
        self.raw = cuda_call(cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self._closed = False
        self.handle = _native_handle(self.raw)
        self.hold_gil = hold_gil and cuda_enqueue.available()

    def synchronize(self) -> None:
        cuda_call(_runtime().cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def wait_event(self, event: "Event") -> None:
        """Work queued here after this call waits, on the GPU, for what was recorded before ``event``
        (another stream's copy, say); the host does not wait."""
        if self.hold_gil:
            cuda_enqueue.stream_wait_event(self.handle, event.handle)
            return
        cuda_call(_runtime().cudaStreamWaitEvent(self.raw, event.raw, 0), "cudaStreamWaitEvent")

    def _free(self) -> None:
        cuda_call(_runtime().cudaStreamDestroy(self.raw), "cudaStreamDestroy")


class Event(_Resource):
    """A completion marker on a stream, created with ``cudaEventDisableTiming | cudaEventBlockingSync``:
    no timing overhead, and :meth:`synchronize` puts the waiting thread to sleep instead of spinning a core."""

    def __init__(self, timing: bool = False) -> None:
        """``timing``: an event :meth:`elapsed_ms` can measure from (benchmarks only; the hot path's events
        record no time)."""
        cudart = _runtime()
        flags = getattr(cudart, "cudaEventBlockingSync", _EVENT_BLOCKING_SYNC)
        if not timing:
            flags |= getattr(cudart, "cudaEventDisableTiming", _EVENT_DISABLE_TIMING)
        self.raw = cuda_call(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self._closed = False
        self.handle = _native_handle(self.raw)

    def elapsed_ms(self, end: "Event") -> float:
        """GPU milliseconds from this event to ``end`` (both made with ``timing=True``, both completed)."""
        return float(cuda_call(_runtime().cudaEventElapsedTime(self.raw, end.raw), "cudaEventElapsedTime"))

    def record(self, stream: Stream) -> None:
        if stream.hold_gil:
            cuda_enqueue.event_record(self.handle, stream.handle)
            return
        cuda_call(_runtime().cudaEventRecord(self.raw, stream.raw), "cudaEventRecord")

    def synchronize(self) -> None:
        cuda_call(_runtime().cudaEventSynchronize(self.raw), "cudaEventSynchronize")

    def query(self, hold_gil: bool = False) -> bool:
        """True when all work recorded before the event is done; False while it is still running.
        ``hold_gil``: ask without giving up the GIL (the driver answers at once)."""
        if hold_gil and cuda_enqueue.available():
            return cuda_enqueue.event_query(self.handle)
        cudart = _runtime()
        result = cudart.cudaEventQuery(self.raw)
        err = result[0] if isinstance(result, tuple) else result
        if int(err) == int(cudart.cudaError_t.cudaErrorNotReady):
            return False
        cuda_call(result, "cudaEventQuery")
        return True

    def _free(self) -> None:
        cuda_call(_runtime().cudaEventDestroy(self.raw), "cudaEventDestroy")


def _host_pointer(array: np.ndarray) -> int:
    if not array.flags.c_contiguous:
        raise ValueError("async copies need a C-contiguous host array (a row slice of a pinned buffer is)")
    return int(array.ctypes.data)


_copy_params = threading.local()  # one CUDA_MEMCPY2D per thread for memcpy2d_dtod_async's GIL-holding path


def memcpy_htod_async(dst_ptr: int, host_array: np.ndarray, stream: Stream) -> None:
    """Enqueue a copy of all of ``host_array`` (pinned, contiguous) to device address ``dst_ptr`` on ``stream``."""
    src = _host_pointer(host_array)
    if stream.hold_gil:
        cuda_enqueue.memcpy_htod(dst_ptr, src, host_array.nbytes, stream.handle)
        return
    cudart = _runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    cuda_call(cudart.cudaMemcpyAsync(dst_ptr, src, host_array.nbytes, kind, stream.raw), "cudaMemcpyAsync(host to device)")


_batch_attributes: Any = None


def memcpy_batch_supported() -> bool:
    """Whether ``cudaMemcpyBatchAsync`` is there (CUDA 12.8 and later, in the bindings and the driver)."""
    cudart = _runtime()
    if not hasattr(cudart, "cudaMemcpyBatchAsync"):  # an older cuda-bindings: the function is not bound
        return False
    version = driver_cuda_version()
    return version is not None and version >= (12, 8)


def memcpy_htod_batch_async(dst_ptrs: list[int], src_ptrs: list[int], sizes: list[int], stream: Stream) -> None:
    """Enqueue host-to-device copies (pinned sources) with one call (``cudaMemcpyBatchAsync``, sources read
    in stream order): each call into CUDA releases and retakes the GIL, and 32 of them per batch
    queued the batcher behind every other Python thread (see docs/benchmarks.md). The caller checks
    :func:`memcpy_batch_supported` first."""
    global _batch_attributes
    cudart = _runtime()
    if _batch_attributes is None:
        attributes = cudart.cudaMemcpyAttributes()
        attributes.srcAccessOrder = cudart.cudaMemcpySrcAccessOrder.cudaMemcpySrcAccessOrderStream
        _batch_attributes = attributes
    count = len(dst_ptrs)
    cuda_call(cudart.cudaMemcpyBatchAsync(dst_ptrs, src_ptrs, sizes, count, [_batch_attributes], [0], 1, stream.raw), f"cudaMemcpyBatchAsync({count} copies)")


def memcpy_dtoh_async(host_array: np.ndarray, src_ptr: int, stream: Stream) -> None:
    """Enqueue a copy from device address ``src_ptr`` into all of ``host_array`` (pinned, contiguous) on ``stream``."""
    dst = _host_pointer(host_array)
    if stream.hold_gil:
        cuda_enqueue.memcpy_dtoh(dst, src_ptr, host_array.nbytes, stream.handle)
        return
    cudart = _runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    cuda_call(cudart.cudaMemcpyAsync(dst, src_ptr, host_array.nbytes, kind, stream.raw), "cudaMemcpyAsync(device to host)")


def memcpy2d_dtod_async(dst_ptr: int, dst_pitch: int, src_ptr: int, src_pitch: int, width_bytes: int, rows: int, stream: Stream) -> None:
    """Enqueue a pitched device-to-device copy of ``rows`` rows of ``width_bytes`` bytes on ``stream``
    (keeping the GIL on a ``hold_gil`` stream: an NVDEC reader makes one or two per frame)."""
    if stream.hold_gil:
        params = getattr(_copy_params, "value", None)
        if params is None:
            params = _copy_params.value = cuda_enqueue.Memcpy2D()
        cuda_enqueue.memcpy2d_dtod(params, dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, rows, stream.handle)
        return
    cudart = _runtime()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    cuda_call(
        cudart.cudaMemcpy2DAsync(dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, rows, kind, stream.raw),
        "cudaMemcpy2DAsync(device to device)",
    )


def primary_context_handle(device: int = 0) -> int:
    """The driver handle of the runtime's primary context (what PyNvVideoCodec takes), made current here."""
    from cuda.bindings import driver

    cuda_call(driver.cuInit(0), "cuInit")
    handle = cuda_call(driver.cuDeviceGet(device), "cuDeviceGet")
    context = cuda_call(driver.cuDevicePrimaryCtxRetain(handle), "cuDevicePrimaryCtxRetain")
    cuda_call(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    return _native_handle(context)


_context_bound = threading.local()


def ensure_context() -> None:
    """Make the runtime's primary context current on the calling thread, once per thread: driver API
    calls (NVRTC kernel launches, :mod:`daemon.cuda_enqueue`) need a current context, which a runtime call
    makes (``cudaFree(0)`` is the customary one)."""
    if getattr(_context_bound, "done", False):
        return
    cuda_call(_runtime().cudaFree(0), "cudaFree(0) (context initialisation)")
    _context_bound.done = True


def set_device(index: int) -> None:
    """Make GPU ``index`` the calling thread's current device (``cudaSetDevice``: per thread)."""
    cuda_call(_runtime().cudaSetDevice(index), f"cudaSetDevice({index})")


class CudaGraph(_Resource):
    """An instantiated CUDA graph (``cudaGraphExec_t``): work captured once from a stream, replayed with
    one launch. Made by :func:`capture_graph`."""

    def __init__(self, graph_exec: Any):
        self.raw = graph_exec
        self._closed = False
        self.handle = _native_handle(graph_exec)

    def launch(self, stream: Stream) -> None:
        if stream.hold_gil:
            cuda_enqueue.graph_launch(self.handle, stream.handle)
            return
        cuda_call(_runtime().cudaGraphLaunch(self.raw, stream.raw), "cudaGraphLaunch")

    def _free(self) -> None:
        cuda_call(_runtime().cudaGraphExecDestroy(self.raw), "cudaGraphExecDestroy")


def capture_graph(stream: Stream, enqueue: Any) -> CudaGraph:
    """Capture what ``enqueue()`` puts on ``stream`` into a graph (thread-local capture mode, as trtexec
    does: other threads may keep using CUDA meanwhile). If ``enqueue`` raises, or the capture is
    invalidated, the capture is ended, its error cleared, and a CudaError raised: the stream is usable
    again and the caller falls back to plain enqueues."""
    cudart = _runtime()
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    cuda_call(cudart.cudaStreamBeginCapture(stream.raw, mode), "cudaStreamBeginCapture")
    failure: BaseException | None = None
    try:
        enqueue()
    except BaseException as exc:  # end the capture whatever happened, then report
        failure = exc
    result = cudart.cudaStreamEndCapture(stream.raw)
    err, graph = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if failure is not None or int(err) != 0:
        if graph is not None and int(err) == 0:
            cudart.cudaGraphDestroy(graph)
        cudart.cudaGetLastError()  # capture errors are sticky until read
        reason = failure if failure is not None else f"cudaStreamEndCapture failed: {_error_name(err)}"
        raise CudaError(f"CUDA graph capture failed: {str(reason).splitlines()[0] if str(reason) else type(reason).__name__}") from None
    try:
        graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    finally:
        cudart.cudaGraphDestroy(graph)
    return CudaGraph(graph_exec)
