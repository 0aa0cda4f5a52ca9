"""daemon.cuda on a CPU machine: without cuda-python, and over a test double of ``cuda.bindings.runtime``.

The double (:class:`FakeCudart`) stands in for cuda-python's runtime bindings, which need a GPU; it proves how
daemon.cuda calls them and handles their results (error tuples, handles, pinned memory as numpy views), not
that CUDA works. Its "pinned" memory is real host memory (ctypes buffers), so the numpy views are real.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import sys
import types

import numpy as np
import pytest

import daemon.cuda as cuda
from daemon.errors import BackendError


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorNotReady = 600


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class _Handle:
    """Like cuda-bindings' cudaStream_t / cudaEvent_t: an object whose int() is the address."""

    def __init__(self, address: int):
        self.address = address

    def __int__(self) -> int:
        return self.address


class FakeCudart(types.ModuleType):
    """A TEST DOUBLE of ``cuda.bindings.runtime`` (see the module docstring)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaEventBlockingSync = 0x01
    cudaEventDisableTiming = 0x02
    cudaStreamNonBlocking = 0x01

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.calls: list[tuple] = []
        self.host: dict[int, ctypes.Array] = {}
        self.device: dict[int, int] = {}
        self.fail_malloc_host = False
        self.event_ready = True
        self.device_count: int | Exception = 1
        self._next = 0x7000

    def _ok(self, *values):
        return (cudaError_t.cudaSuccess, *values)

    def cudaGetErrorName(self, error):
        if not isinstance(error, cudaError_t):
            raise TypeError("Argument 'error' has incorrect type")
        return self._ok(error.name.encode())

    def cudaGetDeviceCount(self):
        if isinstance(self.device_count, Exception):
            raise self.device_count
        return self._ok(self.device_count)

    def cudaGetDeviceProperties(self, device):
        props = types.SimpleNamespace(
            name=b"NVIDIA H100 80GB HBM3" + b"\0" * 8,
            major=9,
            minor=0,
            totalGlobalMem=85 << 30,
            uuid=types.SimpleNamespace(bytes=bytes(range(16))),
        )
        return self._ok(props)

    def cudaRuntimeGetVersion(self):
        return self._ok(13000)

    def cudaDriverGetVersion(self):
        return self._ok(13010)

    def cudaMallocHost(self, size):
        self.calls.append(("cudaMallocHost", size))
        if self.fail_malloc_host:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        buffer = (ctypes.c_ubyte * size)()
        self.host[ctypes.addressof(buffer)] = buffer
        return self._ok(ctypes.addressof(buffer))

    def cudaFreeHost(self, ptr):
        self.calls.append(("cudaFreeHost", ptr))
        del self.host[ptr]
        return self._ok()

    def cudaMalloc(self, size):
        self._next += 0x1000
        self.device[self._next] = size
        return self._ok(self._next)

    def cudaFree(self, ptr):
        del self.device[ptr]
        return self._ok()

    def cudaStreamCreateWithFlags(self, flags):
        self.calls.append(("cudaStreamCreateWithFlags", flags))
        return self._ok(_Handle(0x5100))

    def cudaStreamSynchronize(self, stream):
        return self._ok()

    def cudaStreamDestroy(self, stream):
        self.calls.append(("cudaStreamDestroy", int(stream)))
        return self._ok()

    def cudaEventCreateWithFlags(self, flags):
        self.calls.append(("cudaEventCreateWithFlags", flags))
        return self._ok(_Handle(0xE100))

    def cudaEventRecord(self, event, stream):
        self.calls.append(("cudaEventRecord", int(event), int(stream)))
        return self._ok()

    def cudaEventSynchronize(self, event):
        return self._ok()

    def cudaEventQuery(self, event):
        return (cudaError_t.cudaSuccess if self.event_ready else cudaError_t.cudaErrorNotReady,)

    def cudaEventDestroy(self, event):
        return self._ok()

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append(("cudaMemcpyAsync", dst, src, count, kind, int(stream)))
        return self._ok()


@pytest.fixture
def cudart(monkeypatch) -> FakeCudart:
    fake = FakeCudart()
    package = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = fake
    package.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake)
    monkeypatch.setattr(cuda, "_cudart", None)
    return fake


def test_without_cuda_python_nothing_breaks_until_used(monkeypatch):
    monkeypatch.setattr(cuda, "_cudart", None)
    monkeypatch.setitem(sys.modules, "cuda", None)  # import cuda -> ImportError
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert cuda.cuda_available() is False
    with pytest.raises(cuda.CudaError, match="cuda-python is not installed"):
        cuda.PinnedBuffer(16)
    assert issubclass(cuda.CudaError, BackendError)


def test_cuda_call_returns_values_or_raises_with_the_error_name(cudart):
    assert cuda.cuda_call((cudaError_t.cudaSuccess,)) is None
    assert cuda.cuda_call((cudaError_t.cudaSuccess, 7)) == 7
    assert cuda.cuda_call((cudaError_t.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(cuda.CudaError, match=r"cudaMalloc\(64\) failed: cudaErrorMemoryAllocation \(2\)") as caught:
        cuda.cuda_call((cudaError_t.cudaErrorMemoryAllocation, 0), "cudaMalloc(64)")
    assert caught.value.code == 2


def test_cuda_available_is_false_when_the_driver_is_missing_or_raises(cudart):
    assert cuda.cuda_available() is True
    cudart.device_count = 0
    assert cuda.cuda_available() is False
    cudart.device_count = RuntimeError("Failure finding libcuda.so")  # what cuda-bindings 13 can do without a driver
    assert cuda.cuda_available() is False


def test_device_properties_and_versions(cudart):
    assert cuda.device_properties(0) == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "total_memory": 85 << 30,
        "uuid": "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f",
    }
    assert cuda.cuda_versions() == {"runtime": "13.0", "driver": "13.1"}


def test_pinned_buffer_views_keep_it_alive_and_close_frees_once(cudart):
    buffer = cuda.PinnedBuffer(4 * 2 * 3)
    ptr = buffer.ptr
    view = buffer.array(np.float32, (2, 3))
    assert view.shape == (2, 3) and view.dtype == np.float32 and view.ctypes.data == ptr
    half = buffer.array(np.float16, (12,))  # any dtype: built as bytes, then viewed
    view[0, 0] = 1.0
    assert half.view(np.float32)[0] == 1.0
    row = view[1:]
    del buffer, view, half
    gc.collect()
    assert ptr in cudart.host  # the slice still holds its owner
    row[0, 0] = 5.0
    owner = row._owner
    del row
    owner.close()
    owner.close()
    assert [c for c in cudart.calls if c[0] == "cudaFreeHost"] == [("cudaFreeHost", ptr)]
    with pytest.raises(cuda.CudaError, match="closed"):
        owner.array(np.uint8, (1,))
    with pytest.raises(ValueError, match="needs 400 bytes"):
        cuda.PinnedBuffer(16).array(np.float32, (100,))


def test_a_failed_allocation_raises_and_frees_nothing(cudart):
    cudart.fail_malloc_host = True
    with pytest.raises(cuda.CudaError, match="cudaMallocHost"):
        cuda.PinnedBuffer(1024)
    gc.collect()
    assert not [c for c in cudart.calls if c[0] == "cudaFreeHost"]


def test_streams_and_events(cudart):
    with cuda.Stream() as stream, cuda.Event() as event:
        assert stream.handle == 0x5100
        event.record(stream)
        assert event.query() is True
        cudart.event_ready = False
        assert event.query() is False
    assert ("cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking) in cudart.calls
    assert ("cudaEventCreateWithFlags", cudart.cudaEventDisableTiming | cudart.cudaEventBlockingSync) in cudart.calls
    assert ("cudaEventRecord", 0xE100, 0x5100) in cudart.calls
    assert ("cudaStreamDestroy", 0x5100) in cudart.calls


def test_async_copies_pass_pointers_sizes_kinds_and_the_stream(cudart):
    stream = cuda.Stream()
    host = cuda.PinnedBuffer(64).array(np.float32, (4, 4))
    device = cuda.DeviceBuffer(64)
    cuda.memcpy_htod_async(device.ptr, host[:2], stream)
    cuda.memcpy_dtoh_async(host[1:3], device.ptr, stream)
    copies = [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert copies == [
        ("cudaMemcpyAsync", device.ptr, host.ctypes.data, 32, cudaMemcpyKind.cudaMemcpyHostToDevice, 0x5100),
        ("cudaMemcpyAsync", host.ctypes.data + 16, device.ptr, 32, cudaMemcpyKind.cudaMemcpyDeviceToHost, 0x5100),
    ]
    with pytest.raises(ValueError, match="contiguous"):
        cuda.memcpy_htod_async(device.ptr, host[:, :2], stream)
