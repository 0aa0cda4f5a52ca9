"""The NVDEC device-image pool's bookkeeping, with the CUDA test double standing in for device memory
(no GPU here; the real pool ran on the H100 in tests/test_gpu.py): buffers come back after use or a
drop, an empty pool is backpressure, and closing frees idle buffers at once and busy ones on return."""

from __future__ import annotations

import threading

import pytest

from daemon.config import DropPolicy
from daemon.entities import Frame
from daemon.framequeue import Multiplexer

from .doubles.fake_cuda import FakeCuda


@pytest.fixture
def nvdec(monkeypatch):
    import daemon.gpu.nvdec as module

    fake = FakeCuda()
    monkeypatch.setattr(module, "cuda", fake)
    return module, fake


def test_buffers_return_after_use_and_an_empty_pool_waits(nvdec):
    module, _ = nvdec
    pool = module.DeviceImagePool(2, 64)
    stop = threading.Event()
    first, second = pool.take(stop), pool.take(stop)
    waiter_got = []
    waiter = threading.Thread(target=lambda: waiter_got.append(pool.take(stop)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "an empty pool makes the reader wait (backpressure)"
    module.DeviceImage(pool, first, 8, 8).release()
    waiter.join(5)
    assert waiter_got == [first]
    stop.set()
    assert pool.take(stop) is None, "a stopped reader does not wait"
    del second


def test_a_frame_dropped_by_the_queue_gives_its_buffer_back(nvdec):
    module, _ = nvdec
    pool = module.DeviceImagePool(1, 64)
    stop = threading.Event()
    queue = Multiplexer().add_queue("cam", 1, DropPolicy.DROP_OLDEST)
    queue.put(Frame("cam", 0, None, module.DeviceImage(pool, pool.take(stop), 8, 8), 0.0, 0.0))
    stop.set()
    assert pool.take(stop) is None, "the only buffer is held by the queued frame"
    stop.clear()
    queue.put(Frame("cam", 1, None, object(), 0.0, 0.0))  # a full drop-oldest queue drops frame 0
    assert queue.dropped == 1
    assert pool.take(stop) is not None, "the dropped frame's buffer came back"


def test_close_frees_idle_buffers_now_and_busy_ones_on_return(nvdec):
    module, fake = nvdec
    pool = module.DeviceImagePool(3, 64)
    stop = threading.Event()
    busy = module.DeviceImage(pool, pool.take(stop), 8, 8)
    assert fake.live_resources() == 3 * 2, "a buffer and its copy event per surface"
    pool.close()
    assert fake.live_resources() == 2, "the two idle surfaces are freed at once"
    assert pool.take(stop) is None, "a closed pool hands out nothing"
    busy.release()
    busy.release()  # idempotent
    assert fake.live_resources() == 0
