"""A TEST DOUBLE of :mod:`daemon.cuda`: ``FakeCuda()`` is passed where code takes the ``cuda`` layer.

It stands in for CUDA on machines without a GPU; it proves what the backend asks of the CUDA layer, not that
CUDA works (``daemon/cuda.py`` itself is checked on a real GPU). Same names and signatures as ``daemon.cuda``
(``tests/test_tensorrt_backend.py`` checks that), with:

* **Pinned buffers** as plain numpy byte arrays, tracked so an async copy from memory that is not inside a live
  pinned buffer (pageable memory, which would make the copy synchronous on a real GPU) fails the test.
* **Device memory** (:class:`FakeDevice`) as numpy byte arrays at made-up 256-aligned addresses that can never
  be host addresses; any access outside a live allocation (use after free, overflow) raises.
* **Streams and events that do the work at once**: copies happen when enqueued, so data really moves from the
  pinned input, through the fake device (where the fake TensorRT "computes"), back to the pinned output.

Every operation is recorded into ``calls`` (share the list with the TensorRT double to see one sequence):
``("cuda.memcpy_htod_async", (device_ptr, nbytes, stream_handle), {})``, ``("cuda.Event.record", (event_id,
stream_handle), {})``, ``("cuda.Stream", (handle,), {})``, ...
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from daemon.cuda import CudaError, bindings_driver_mismatch, cuda_call

__all__ = ["FakeCuda", "FakeDevice"]

_ALIGN = 256


class FakeDevice:
    """Device memory: address -> numpy bytes. Addresses start far above any user-space host address."""

    BASE = 0xD000_0000_0000

    def __init__(self) -> None:
        self._next = self.BASE
        self.allocations: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN + _ALIGN  # a gap: overflows never land in a neighbour
        self.allocations[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        if self.allocations.pop(ptr, None) is None:
            raise CudaError(f"cudaFree failed: cudaErrorInvalidValue (1): {ptr:#x} is not allocated", 1)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes at [ptr, ptr + nbytes), which must lie inside one live allocation."""
        for base, memory in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + memory.nbytes:
                return memory[ptr - base : ptr - base + nbytes]
        raise CudaError(f"fake device: illegal address {ptr:#x}+{nbytes} (not inside a live allocation)", 700)


class _Owned:
    _fake: FakeCuda
    _closed = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._free()

    def _free(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _PinnedBuffer(_Owned):
    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ValueError(f"PinnedBuffer needs a positive size, got {nbytes}")
        self.nbytes = int(nbytes)
        self._memory = np.zeros(self.nbytes, np.uint8)
        self.ptr = int(self._memory.ctypes.data)
        self._closed = False
        self._fake.pinned.append(self)
        self._fake.calls.append(("cuda.PinnedBuffer", (self.nbytes,), {}))

    def array(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        if self._closed:
            raise CudaError("PinnedBuffer.array: the buffer is closed")
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"{shape} of {dtype} needs {nbytes} bytes; the buffer has {self.nbytes}")
        return self._memory[:nbytes].view(dtype).reshape(shape)

    def _free(self) -> None:
        self._fake.pinned.remove(self)
        self._fake.calls.append(("cuda.PinnedBuffer.close", (self.ptr,), {}))


class _DeviceBuffer(_Owned):
    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ValueError(f"DeviceBuffer needs a positive size, got {nbytes}")
        self.nbytes = int(nbytes)
        self.ptr = self._fake.device.alloc(self.nbytes)
        self._closed = False
        self._fake.calls.append(("cuda.DeviceBuffer", (self.nbytes,), {"ptr": self.ptr}))

    def _free(self) -> None:
        self._fake.device.free(self.ptr)
        self._fake.calls.append(("cuda.DeviceBuffer.close", (self.ptr,), {}))


class _Stream(_Owned):
    def __init__(self, hold_gil: bool = False) -> None:
        self.hold_gil = hold_gil  # recorded only: the double's calls never release anything
        self._fake.stream_count += 1
        self.handle = 0x5000 + 0x10 * self._fake.stream_count
        self.raw = self.handle
        self._closed = False
        self._fake.streams.append(self)
        self._fake.calls.append(("cuda.Stream", (self.handle,), {}))

    def synchronize(self) -> None:
        self._check()
        self._fake.calls.append(("cuda.Stream.synchronize", (self.handle,), {}))

    def wait_event(self, event: "_Event") -> None:
        self._check()
        event._check()
        self._fake.calls.append(("cuda.Stream.wait_event", (self.handle, event.id), {}))

    def _check(self) -> None:
        if self._closed:
            raise CudaError("cudaErrorInvalidResourceHandle (400): the stream is destroyed", 400)

    def _free(self) -> None:
        self._fake.streams.remove(self)
        self._fake.calls.append(("cuda.Stream.close", (self.handle,), {}))


class _Event(_Owned):
    def __init__(self, timing: bool = False) -> None:
        self.timing = timing
        self._fake.event_count += 1
        self.id = self._fake.event_count
        self.recorded_on: int | None = None
        self._closed = False
        self._fake.events.append(self)
        self._fake.calls.append(("cuda.Event", (self.id,), {}))

    def record(self, stream: Any) -> None:
        self._check()
        stream._check()
        self.recorded_on = stream.handle
        self._fake.calls.append(("cuda.Event.record", (self.id, stream.handle), {}))

    def synchronize(self) -> None:
        self._check()
        self._fake.calls.append(("cuda.Event.synchronize", (self.id,), {}))

    def query(self, hold_gil: bool = False) -> bool:
        self._check()
        self._fake.calls.append(("cuda.Event.query", (self.id,), {}))
        return True

    def elapsed_ms(self, end: "_Event") -> float:
        """The double runs no device work: no time passes between its events (as CUDA, it refuses events
        made without timing)."""
        self._check()
        end._check()
        if not (self.timing and end.timing):
            raise CudaError("cudaErrorInvalidResourceHandle (400): an event made without timing", 400)
        return 0.0

    def _check(self) -> None:
        if self._closed:
            raise CudaError("cudaErrorInvalidResourceHandle (400): the event is destroyed", 400)

    def _free(self) -> None:
        self._fake.events.remove(self)
        self._fake.calls.append(("cuda.Event.close", (self.id,), {}))


class _Graph(_Owned):
    """A "captured" graph: the double cannot record device work, so a launch runs the captured enqueue
    again (its data moves as a replay's would) and erases what that re-run recorded, leaving one
    ``cuda.CudaGraph.launch`` in ``calls``: what a real replay looks like from the host."""

    def __init__(self, graph_exec: Any):
        self.raw = graph_exec
        self._enqueue = graph_exec
        self._closed = False
        self._fake.graph_count = getattr(self._fake, "graph_count", 0) + 1
        self.id = self._fake.graph_count
        self._fake.graphs.append(self)

    def launch(self, stream: Any) -> None:
        if self._closed:
            raise CudaError("cudaErrorInvalidResourceHandle (400): the graph is destroyed", 400)
        stream._check()
        calls = self._fake.calls
        mark = len(calls)
        self._enqueue()
        del calls[mark:]
        calls.append(("cuda.CudaGraph.launch", (self.id, stream.handle), {}))

    def _free(self) -> None:
        self._fake.graphs.remove(self)
        self._fake.calls.append(("cuda.CudaGraph.close", (self.id,), {}))


class _ImportedDeviceMemory(_Owned):
    """Another process's exported memory, in this double the same fake device's (one process): the handle
    carries the address, and opening it checks that the allocation is live."""

    def __init__(self, handle: bytes):
        if len(handle) != 64:
            raise CudaError(f"an IPC memory handle has 64 bytes, not {len(handle)}")
        self.ptr = int.from_bytes(handle[:8], "little")
        self._fake.device.view(self.ptr, 1)
        self._closed = False
        self._fake.calls.append(("cuda.ImportedDeviceMemory", (self.ptr,), {}))

    def _free(self) -> None:
        self._fake.calls.append(("cuda.ImportedDeviceMemory.close", (self.ptr,), {}))


class FakeCuda:
    """A stand-in for the ``daemon.cuda`` module, with its own fake device and call record."""

    CudaError = CudaError

    def __init__(
        self,
        calls: list | None = None,
        *,
        gpu_name: str = "NVIDIA H100 80GB HBM3",
        compute_capability: str = "9.0",
        runtime: str = "13.0",
        driver: str = "13.1",
        capture: bool = False,
    ):
        self.calls: list[tuple[str, tuple, dict]] = calls if calls is not None else []
        self.device = FakeDevice()
        self.gpu_name = gpu_name
        self.compute_capability = compute_capability
        self.versions = {"runtime": runtime, "driver": driver}
        self.pinned: list[_PinnedBuffer] = []
        self.streams: list[_Stream] = []
        self.events: list[_Event] = []
        self.stream_count = 0
        self.event_count = 0
        self.capture = capture  # capture_graph works only when asked for (else: "not supported", as some engines)
        self.graphs: list[_Graph] = []
        self.current_device = 0
        self.PinnedBuffer = type("PinnedBuffer", (_PinnedBuffer,), {"_fake": self})
        self.DeviceBuffer = type("DeviceBuffer", (_DeviceBuffer,), {"_fake": self})
        self.Stream = type("Stream", (_Stream,), {"_fake": self})
        self.Event = type("Event", (_Event,), {"_fake": self})
        self.CudaGraph = type("CudaGraph", (_Graph,), {"_fake": self})
        self.ImportedDeviceMemory = type("ImportedDeviceMemory", (_ImportedDeviceMemory,), {"_fake": self})

    def ipc_memory_handle(self, buffer: Any) -> bytes:
        """The address as the handle's first 8 bytes (the double's device is this process's)."""
        self.device.view(buffer.ptr, 1)
        return buffer.ptr.to_bytes(8, "little").ljust(64, b"\0")

    @staticmethod
    def cuda_call(result: Any, what: str = "") -> Any:
        return cuda_call(result, what)

    def cuda_available(self) -> bool:
        return True

    # The version checks are pure functions of what they read: the double answers as a machine whose
    # bindings fit its driver would (the real functions are tested in tests/test_cuda_mismatch.py).
    def driver_cuda_version(self) -> tuple[int, int] | None:
        major, minor = self.versions["driver"].split(".")[:2]
        return int(major), int(minor)

    @staticmethod
    def bindings_version() -> str | None:
        return None

    bindings_driver_mismatch = staticmethod(bindings_driver_mismatch)

    @staticmethod
    def cuda_mismatch() -> str | None:
        return None

    @staticmethod
    def bindings_fit_driver() -> bool:
        return True

    def device_properties(self, index: int = 0) -> dict[str, Any]:
        return {
            "index": index,
            "name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "total_memory": 80 << 30,
            "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        }

    def cuda_versions(self) -> dict[str, str]:
        return dict(self.versions)

    def live_resources(self) -> int:
        """Pinned buffers, device allocations, streams and events not yet freed."""
        return len(self.pinned) + len(self.device.allocations) + len(self.streams) + len(self.events) + len(self.graphs)

    def _pinned_bytes(self, array: np.ndarray) -> np.ndarray:
        if not array.flags.c_contiguous:
            raise ValueError("async copies need a C-contiguous host array")
        address = int(array.ctypes.data)
        for buffer in self.pinned:
            if buffer.ptr <= address and address + array.nbytes <= buffer.ptr + buffer.nbytes:
                return array.reshape(-1).view(np.uint8)
        raise AssertionError("fake_cuda: async copy with pageable host memory (not inside a live PinnedBuffer)")

    def memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, stream: Any) -> None:
        stream._check()
        source = self._pinned_bytes(host_array)
        self.device.view(dst_ptr, source.nbytes)[:] = source
        self.calls.append(("cuda.memcpy_htod_async", (dst_ptr, source.nbytes, stream.handle), {}))

    def memcpy_batch_supported(self) -> bool:
        return self.driver_cuda_version() >= (12, 8)

    def memcpy_htod_batch_async(self, dst_ptrs: list[int], src_ptrs: list[int], sizes: list[int], stream: Any) -> None:
        stream._check()
        assert self.memcpy_batch_supported(), "fake_cuda: cudaMemcpyBatchAsync needs CUDA 12.8"
        for dst, src, size in zip(dst_ptrs, src_ptrs, sizes, strict=True):
            source = self._pinned_bytes(np.ctypeslib.as_array((ctypes.c_ubyte * size).from_address(src)))
            self.device.view(dst, size)[:] = source
        self.calls.append(("cuda.memcpy_htod_batch_async", (tuple(dst_ptrs), tuple(sizes), stream.handle), {}))

    def memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, stream: Any) -> None:
        stream._check()
        target = self._pinned_bytes(host_array)
        target[:] = self.device.view(src_ptr, target.nbytes)
        self.calls.append(("cuda.memcpy_dtoh_async", (src_ptr, target.nbytes, stream.handle), {}))

    def memcpy2d_dtod_async(
        self, dst_ptr: int, dst_pitch: int, src_ptr: int, src_pitch: int, width_bytes: int, rows: int, stream: Any
    ) -> None:
        stream._check()
        for row in range(rows):
            self.device.view(dst_ptr + row * dst_pitch, width_bytes)[:] = self.device.view(src_ptr + row * src_pitch, width_bytes)
        self.calls.append(("cuda.memcpy2d_dtod_async", (dst_ptr, src_ptr, width_bytes, rows, stream.handle), {}))

    def set_device(self, index: int) -> None:
        self.current_device = index
        self.calls.append(("cuda.set_device", (index,), {}))

    def ensure_context(self) -> None:
        self.calls.append(("cuda.ensure_context", (), {}))

    def capture_graph(self, stream: Any, enqueue: Any) -> Any:
        """Runs ``enqueue`` once (as capture would record it) and returns a graph that re-runs it."""
        stream._check()
        if not self.capture:
            raise CudaError("CUDA graph capture failed: not supported by this CPU double (FakeCuda(capture=True) is)")
        self.calls.append(("cuda.capture_graph", (stream.handle,), {}))
        enqueue()
        graph = self.CudaGraph(enqueue)
        self.calls.append(("cuda.CudaGraph", (graph.id,), {}))
        return graph

    def primary_context_handle(self, device: int = 0) -> int:
        self.calls.append(("cuda.primary_context_handle", (device,), {}))
        return 0x7C7C

