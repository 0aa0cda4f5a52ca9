"""The premise of daemon/cuda_enqueue.py, checked with a real library: a function bound by its loader
keeps Python's GIL for the whole call (no other Python thread runs), where ctypes.CDLL's releases it.
The CUDA calls themselves need a GPU: tests/test_gpu.py runs the runtime both ways on the H200."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import pytest

from daemon import cuda_enqueue


def _longest_stall_during_a_sleep(loader) -> float:
    """The longest time a busy Python thread went without advancing while ``usleep(200 ms)``, bound by
    ``loader``, ran on the main thread (seconds)."""
    libc = loader(ctypes.util.find_library("c") or "libc.so.6")
    libc.usleep.argtypes, libc.usleep.restype = [ctypes.c_uint], ctypes.c_int
    longest, running, stop = [0.0], threading.Event(), threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        running.set()
        while not stop.is_set():
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    assert running.wait(5)
    libc.usleep(200_000)
    stop.set()
    ticker.join(5)
    return longest[0]


def test_the_enqueue_loader_keeps_the_gil_for_the_call():
    assert cuda_enqueue.LOADER is ctypes.PyDLL
    held = _longest_stall_during_a_sleep(cuda_enqueue.LOADER)
    released = _longest_stall_during_a_sleep(ctypes.CDLL)
    assert held >= 0.19, "no Python thread may run while a GIL-holding call runs"
    assert released < held, (released, held)  # the measurement can see a thread run beside a call


def test_without_a_driver_library_the_enqueues_say_why_and_refuse():
    if cuda_enqueue.available():
        pytest.skip("this machine has an NVIDIA driver")
    assert "libcuda" in (cuda_enqueue.unavailable_reason() or "")
    with pytest.raises(cuda_enqueue.CudaEnqueueError, match="libcuda.so.1 cannot be loaded"):
        cuda_enqueue.event_record(1, 2)
