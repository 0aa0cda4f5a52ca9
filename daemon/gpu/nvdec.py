"""NVDEC decoding with PyNvVideoCodec: frames decoded straight into device memory (NV12), never copied
to the host; GPU preprocessing reads them where they are.

PyNvVideoCodec is optional and imported lazily: ``import PyNvVideoCodec`` fails on a machine without the
NVIDIA driver. Each decoded frame is copied device-to-device (microseconds) into a buffer of a small
per-source pool, because the decoder reuses its own surfaces; the :class:`DeviceImage` goes back to the
pool when the batch that used it has completed (or when the queue drops it). An empty pool is
backpressure: the reader waits, exactly as a full queue makes it wait. When the source closes (end,
reload, reconnect) its idle buffers are freed at once and the others as their frames come back.

The reader never waits for its copy. The copy is queued keeping the GIL (one call when the decoder's
planes are contiguous, as they are), an event is recorded after it, and whoever reads the frame makes
its own stream wait for that event on the GPU (:attr:`DeviceImage.ready`); before the next decode the
reader only asks whether the copy is done (it is, a frame interval later). A GIL profile of 96 cameras
on the H200 (docs/benchmarks.md) had the two cuda-bindings copies and the synchronize after them, each
giving the GIL up and queueing to take it back, among the readers' largest costs.
"""

from __future__ import annotations

import threading

from .. import cuda
from ..bufferpool import BufferPool
from ..capture import file_pts_ms
from ..entities import DeviceFrame
from ..errors import SourceError

__all__ = ["DeviceImage", "DeviceImagePool", "NvdecProducer", "Surface", "nvdec_available"]


def nvdec_available() -> bool:
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception:
        return False
    return True


class Surface:
    """A pool entry: a frame's device buffer and the event recorded after the copy into it."""

    def __init__(self, nbytes: int):
        self.buffer = cuda.DeviceBuffer(nbytes)
        self.copied = cuda.Event()

    def close(self) -> None:
        self.copied.close()
        self.buffer.close()


class DeviceImage(DeviceFrame):
    """One NV12 frame in device memory: Y plane (height x width) then interleaved UV (height/2 x width).
    ``ready``: the event after which it is there (a reader's stream waits for it)."""

    def __init__(self, pool: "DeviceImagePool", surface: Surface, width: int, height: int):
        self._pool = pool
        self.surface = surface
        self.buffer = surface.buffer
        self.ready = surface.copied
        self.width, self.height = width, height
        self.pitch = width
        self.shape = (height, width, 3)  # the frame's size as the pipelines see it
        self.nbytes = width * height * 3 // 2
        self._released = False

    @property
    def y_ptr(self) -> int:
        return self.buffer.ptr

    @property
    def uv_ptr(self) -> int:
        return self.buffer.ptr + self.pitch * self.height

    def release(self) -> None:
        """Give the buffer back (idempotent): the frame was dropped, or its batch has completed."""
        if not self._released:
            self._released = True
            self._pool.give_back(self.surface)


class DeviceImagePool(BufferPool[Surface]):
    """A fixed set of device buffers (with their copy events) for one source's decoded frames (readers
    take with their stop event: an empty pool makes them wait)."""

    def __init__(self, count: int, nbytes: int):
        super().__init__((Surface(nbytes) for _ in range(count)), lambda surface: surface.close())


class NvdecProducer:
    """A file decoded by NVDEC (``sources[].decoder = "nvdec"``)."""

    def __init__(self, path: str, pool_size: int, stop: threading.Event, gpu: int = 0):
        try:
            import PyNvVideoCodec as nvc
        except Exception as exc:
            raise SourceError(f"NVDEC needs PyNvVideoCodec and the NVIDIA driver: {exc}", retryable=False) from None
        self._stop = stop
        self._stream = cuda.Stream(hold_gil=True)  # copies and event records keep the GIL (module docstring)
        self._last_copy: cuda.Event | None = None
        context = cuda.primary_context_handle(gpu)
        try:
            self._decoder = nvc.SimpleDecoder(
                path, gpu_id=gpu, cuda_context=context, cuda_stream=self._stream.handle, use_device_memory=True,
                output_color_type=nvc.OutputColorType.NATIVE,
            )  # fmt: skip
            metadata = self._decoder.get_stream_metadata()
        except Exception as exc:
            raise SourceError(f"NVDEC cannot decode {path}: {exc}", retryable=False) from None
        self.fps = float(getattr(metadata, "average_fps", 0) or 0) or None
        # The end is known from the container's index: asking SimpleDecoder for the frame past it prints
        # "INVALID INDEX <n>" on every loop of every camera (0 = unknown: ask until it returns nothing).
        self._frame_count = int(getattr(metadata, "num_frames", 0) or 0)
        self.width = self.height = 0
        self._pool: DeviceImagePool | None = None
        self._pool_size = pool_size
        self._index = 0  # frames grabbed since the start (or the last rewind)
        self._grabbed = None

    def grab(self) -> bool:
        """The next frame decoded by NVDEC (in the decoder's own surface, until ``retrieve`` copies it)."""
        self._await_last_copy()
        if self._frame_count and self._index >= self._frame_count:
            self._grabbed = None
        else:
            frames = self._decoder.get_batch_frames(1)
            self._grabbed = frames[0] if frames else None
        if self._grabbed is None:
            return False
        self._index += 1
        return True

    def retrieve(self):
        frame, self._grabbed = self._grabbed, None
        if frame is None:
            return None, None
        planes = [plane.__cuda_array_interface__ for plane in frame.cuda()]
        height, width = int(planes[0]["shape"][0]), int(planes[0]["shape"][1])
        if self._pool is None:
            self.width, self.height = width, height
            self._pool = DeviceImagePool(self._pool_size, width * height * 3 // 2)
        surface = self._pool.take(self._stop)
        if surface is None:
            return None, None
        dst = surface.buffer.ptr
        y_ptr, uv_ptr = int(planes[0]["data"][0]), int(planes[1]["data"][0])
        y_pitch = planes[0]["strides"][0] if planes[0].get("strides") else width
        uv_pitch = planes[1]["strides"][0] if planes[1].get("strides") else width
        if uv_pitch == y_pitch and uv_ptr == y_ptr + y_pitch * height:  # one allocation, chroma after luma: one copy
            cuda.memcpy2d_dtod_async(dst, width, y_ptr, y_pitch, width, height + height // 2, self._stream)
        else:
            cuda.memcpy2d_dtod_async(dst, width, y_ptr, y_pitch, width, height, self._stream)
            cuda.memcpy2d_dtod_async(dst + width * height, width, uv_ptr, uv_pitch, width, height // 2, self._stream)
        surface.copied.record(self._stream)
        self._last_copy = surface.copied
        pts = file_pts_ms((self._index - 1) * 1000.0 / self.fps) if self.fps else None
        return DeviceImage(self._pool, surface, width, height), pts

    def _await_last_copy(self) -> None:
        """The decoder may reuse the surface the last frame was copied from: that copy must be done. A
        frame interval later it is, and the question keeps the GIL; an unpaced reader may wait here."""
        event, self._last_copy = self._last_copy, None
        if event is not None and not event.query(hold_gil=True):
            event.synchronize()

    def rewind(self) -> bool:
        self._decoder.seek_to_index(0)
        self._index = 0
        return True

    def close(self) -> None:
        self._decoder = None
        self._last_copy = None
        self._stream.synchronize()
        if self._pool is not None:
            self._pool.close()
        self._stream.close()
