"""A fixed set of reusable frame buffers for one source, shared by NVDEC device images and pinned host
frames (:mod:`daemon.gpu.nvdec`, :mod:`daemon.pinned`).

Buffers are allocated once. A frame gives its buffer back when its batch has completed or the queue
dropped it. Closing the pool (the source ended, was reloaded or reconnects) frees the idle buffers at
once and each busy one when it comes back, so nothing in flight is freed under the GPU and nothing leaks.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, Iterable, TypeVar

__all__ = ["BufferPool"]

T = TypeVar("T")


class BufferPool(Generic[T]):
    def __init__(self, buffers: Iterable[T], free: Callable[[T], None]):
        self._idle: deque[T] = deque(buffers)
        self._free = free
        self._ready = threading.Condition(threading.Lock())
        self._closing = False
        self.misses = 0  # takes without a stop event that found every buffer in use

    def take(self, stop: threading.Event | None = None) -> T | None:
        """A free buffer. Without ``stop``: None at once when every buffer is in use (counted in
        ``misses``). With ``stop``: wait for one to come back (backpressure), None once ``stop`` is set.
        A closed pool hands out nothing."""
        with self._ready:
            while not self._idle:
                if self._closing:
                    return None
                if stop is None:
                    self.misses += 1
                    return None
                if stop.is_set():
                    return None
                self._ready.wait(0.1)
            return self._idle.popleft()

    def give_back(self, buffer: T) -> None:
        with self._ready:
            if not self._closing:
                self._idle.append(buffer)
                self._ready.notify()
                return
        self._free(buffer)  # the source is gone: free it instead of keeping it for reuse

    def close(self) -> None:
        """Free the idle buffers now; buffers still queued or in flight are freed when they come back."""
        with self._ready:
            self._closing = True
            idle = list(self._idle)
            self._idle.clear()
            self._ready.notify_all()
        for buffer in idle:
            self._free(buffer)
