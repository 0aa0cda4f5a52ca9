"""Decoded frames in page-locked (pinned) host memory, pooled per source.

With GPU preprocessing, a frame decoded into ordinary memory must first be copied into a pinned staging
area (the only memory the GPU copies from asynchronously), and that copy ran on the batcher thread, once
per frame: with a 0.1 ms-per-image engine it was the pipeline's limit. Instead, a reader asks OpenCV to
decode straight into a buffer from its source's pool (``VideoCapture.read(image)`` writes into a given
array of the right size), and the backend copies that buffer to the device with one asynchronous copy,
no CPU copy. On Jetson, pinned memory is also what the GPU reads without any copy.

A :class:`PinnedImage` is an ``np.ndarray`` (every CPU consumer works unchanged) that goes back to its
pool on :meth:`PinnedImage.release`, which the scheduler calls once the frame's batch has completed, as it
does for NVDEC device images. An empty pool never stalls a reader: it decodes into ordinary memory
instead (counted), so the pool is sized for the steady state, not the worst case.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from . import cuda

__all__ = ["PinnedImage", "PinnedImagePool"]


class PinnedImage(np.ndarray):
    """A BGR frame over a pooled pinned buffer (an ndarray subclass so the CPU paths need no change)."""

    _pool: "PinnedImagePool | None"
    _buffer: "cuda.PinnedBuffer | None"
    _released: bool

    def __array_finalize__(self, obj) -> None:  # views and slices do not own the buffer
        self._pool = None
        self._buffer = None
        self._released = True

    def release(self) -> None:
        """Give the buffer back to its pool (once; a no-op on views and after the first call)."""
        if not self._released and self._pool is not None:
            self._released = True
            self._pool.give_back(self)


class PinnedImagePool:
    """``count`` pinned buffers of one frame shape (height, width, 3) for one source."""

    def __init__(self, count: int, shape: tuple[int, int, int]):
        self.shape = tuple(shape)
        self._nbytes = int(np.prod(shape))
        self._free: deque[PinnedImage] = deque()
        for _ in range(count):  # one PinnedImage per buffer, built once: taking one costs a lock, no allocation
            buffer = cuda.PinnedBuffer(self._nbytes)
            image = buffer.array(np.uint8, self.shape).view(PinnedImage)
            image._pool, image._buffer = self, buffer
            self._free.append(image)
        self._lock = threading.Lock()
        self._closing = False
        self.misses = 0  # takes that found the pool empty (the reader then decoded into ordinary memory)

    def take(self) -> PinnedImage | None:
        """A free buffer as a :class:`PinnedImage`, or None at once when every buffer is in use."""
        with self._lock:
            if self._closing or not self._free:
                self.misses += 1
                return None
            image = self._free.popleft()
        image._released = False
        return image

    def give_back(self, image: PinnedImage) -> None:
        with self._lock:
            if not self._closing:
                self._free.append(image)
                return
        image._buffer.close()  # the source is gone: free it instead of keeping it for reuse

    def close(self) -> None:
        """Free the idle buffers now; buffers still queued or in flight are freed when they come back."""
        with self._lock:
            self._closing = True
            idle = list(self._free)
            self._free.clear()
        for image in idle:
            image._buffer.close()
