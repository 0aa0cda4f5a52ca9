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
from typing import Any

import numpy as np

from . import cuda
from .bufferpool import BufferPool
from .entities import PooledImage

__all__ = ["PinnedImage", "PinnedImagePool", "PooledArray"]


class PooledArray(np.ndarray):
    """A frame over memory a pool owns, as an ``np.ndarray`` (every CPU consumer works unchanged), that goes
    back to its pool on :meth:`release`: ``pool.give_back(self)``. Pinned buffers here, and the slots of a
    decoding process's shared memory (:class:`daemon.cpudecodeproc.SlotImage`)."""

    _pool: Any
    _released: bool

    def __array_finalize__(self, obj) -> None:  # views and slices do not own the memory
        self._pool = None
        self._released = True

    def release(self) -> None:
        """Give the memory back to its pool (once; a no-op on views and after the first call)."""
        if not self._released and self._pool is not None:
            self._released = True
            self._pool.give_back(self)


class PinnedImage(PooledArray):
    """A BGR frame over a pooled pinned buffer: the GPU runtime copies it to the device in place."""

    _buffer: "cuda.PinnedBuffer | None"

    def __array_finalize__(self, obj) -> None:
        super().__array_finalize__(obj)
        self._buffer = None


class PinnedImagePool(BufferPool[PinnedImage]):
    """``count`` pinned buffers of one frame shape (height, width, 3) for one source. Readers take
    without waiting: an empty pool means "decode into ordinary memory this time" (counted in
    ``misses``)."""

    def __init__(self, count: int, shape: tuple[int, int, int]):
        self.shape = tuple(shape)
        nbytes = int(np.prod(shape))
        images = []
        for _ in range(count):  # one PinnedImage per buffer, built once: taking one costs a lock, no allocation
            buffer = cuda.PinnedBuffer(nbytes)
            image = buffer.array(np.uint8, self.shape).view(PinnedImage)
            image._pool, image._buffer = self, buffer
            images.append(image)
        super().__init__(images, lambda image: image._buffer.close())

    def take(self, stop: threading.Event | None = None) -> PinnedImage | None:
        image = super().take(stop)
        if image is not None:
            image._released = False
        return image


PooledImage.register(PooledArray)  # an ndarray subclass cannot also derive from the ABC's metaclass cheaply
