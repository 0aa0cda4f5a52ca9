"""TEST DOUBLE of CUDA for the NVDEC decoding process on a machine without a GPU (tests/test_nvdec_process.py
puts this folder first on the child's PYTHONPATH, so Python runs this at start-up). It replaces the parts
of :mod:`daemon.cuda` the child uses: "device" memory is host memory, the daemon's exported frame memory
is a shared file the handle names (``FileDeviceBuffer`` in the test), copies are ``memmove`` row by row,
streams and events do their work at once. It proves what the decoding process does with the memory it is
given, not that CUDA IPC works (that is a GPU test)."""

from __future__ import annotations

import ctypes
import mmap
import os

import daemon.cuda as cuda


class _ImportedDeviceMemory:
    def __init__(self, handle: bytes):
        path = handle.rstrip(b"\0").decode()
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), os.path.getsize(path))
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.ptr = 0
            try:
                self._map.close()
            except BufferError:  # the from_buffer view above: the mapping goes with the process
                pass


class _Stream:
    handle = 1
    hold_gil = True

    def __init__(self, hold_gil: bool = False) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Event:
    def __init__(self, timing: bool = False) -> None:
        pass

    def record(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def _memcpy2d(dst_ptr: int, dst_pitch: int, src_ptr: int, src_pitch: int, width_bytes: int, rows: int, stream) -> None:
    for row in range(rows):
        ctypes.memmove(dst_ptr + row * dst_pitch, src_ptr + row * src_pitch, width_bytes)


if os.environ.get("TRTSTREAM_FAKE_CUDA_CHILD") == "1":
    cuda.ImportedDeviceMemory = _ImportedDeviceMemory
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.memcpy2d_dtod_async = _memcpy2d
    cuda.primary_context_handle = lambda device=0: 1
