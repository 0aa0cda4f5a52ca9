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

import collections
import logging
import threading
import time
from typing import Any

import numpy as np

from .. import cuda
from ..bufferpool import BufferPool
from ..capture import file_pts_ms
from ..demux import NVDEC_CODECS
from ..entities import DeviceFrame
from ..errors import SourceError
from ..redact import mask_text
from .nv12 import Nv12Planes

__all__ = ["DeviceImage", "DeviceImagePool", "FrameCopier", "NvdecProducer", "NvdecStreamProducer", "Surface", "nvdec_available"]

log = logging.getLogger(__name__)


def nvdec_available() -> bool:
    try:
        _pynvvideocodec()
    except SourceError:
        return False
    return True


def _pynvvideocodec() -> Any:
    """The PyNvVideoCodec module, imported when a source first needs it (it fails to import without the
    NVIDIA driver), or the SourceError that ends such a source."""
    try:
        import PyNvVideoCodec
    except Exception as exc:
        raise SourceError(f"NVDEC needs PyNvVideoCodec and the NVIDIA driver: {exc}", retryable=False) from None
    return PyNvVideoCodec


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


class FrameCopier:
    """Copies decoded frames out of a decoder's surfaces into one source's pool (module docstring): one
    owner, the source's reader thread. The pool is made at the first frame, at its size."""

    def __init__(self, pool_size: int, stop: threading.Event):
        self._stop = stop
        self._stream = cuda.Stream(hold_gil=True)  # copies and event records keep the GIL (module docstring)
        self._last_copy: cuda.Event | None = None
        self._pool: DeviceImagePool | None = None
        self._pool_size = pool_size
        self._frame_bytes = 0
        self.size = (0, 0)  # the last frame's width and height (0 before the first)

    @property
    def stream(self) -> cuda.Stream:
        return self._stream

    def await_last_copy(self) -> None:
        """The decoder may reuse the surface the last frame was copied from: that copy must be done. A
        frame interval later it is, and the question keeps the GIL; an unpaced reader may wait here."""
        event, self._last_copy = self._last_copy, None
        if event is not None and not event.query(hold_gil=True):
            event.synchronize()

    def copy(self, frame: Any) -> DeviceImage | None:
        """``frame`` (PyNvVideoCodec's, NV12 planes) into a pool buffer; None for no frame, or when stopped
        while the pool was empty. ``size`` is then the last frame's (width, height)."""
        if frame is None:
            return None
        planes = Nv12Planes.of(frame)
        width, height, nbytes = planes.width, planes.height, planes.nbytes
        if self._pool is None or nbytes != self._frame_bytes:  # the first frame, or a camera that changed its size
            if self._pool is not None:
                self._pool.close()  # idle buffers now, busy ones when their batch is done
            self._pool, self._frame_bytes = DeviceImagePool(self._pool_size, nbytes), nbytes
        surface = self._pool.take(self._stop)
        if surface is None:
            return None
        planes.copy_to(surface.buffer.ptr, lambda *args: cuda.memcpy2d_dtod_async(*args, self._stream))
        surface.copied.record(self._stream)
        self._last_copy = surface.copied
        self.size = (width, height)
        return DeviceImage(self._pool, surface, width, height)

    def close(self) -> None:
        """After the decoder is gone: the copies finish, idle buffers are freed now, busy ones on return."""
        self._last_copy = None
        self._stream.synchronize()
        if self._pool is not None:
            self._pool.close()
        self._stream.close()


class NvdecProducer:
    """A file decoded by NVDEC (``sources[].decoder = "nvdec"``)."""

    def __init__(self, path: str, pool_size: int, stop: threading.Event, gpu: int = 0):
        nvc = _pynvvideocodec()
        self._copier = FrameCopier(pool_size, stop)
        context = cuda.primary_context_handle(gpu)
        try:
            self._decoder = nvc.SimpleDecoder(
                path, gpu_id=gpu, cuda_context=context, cuda_stream=self._copier.stream.handle, use_device_memory=True,
                output_color_type=nvc.OutputColorType.NATIVE,
            )  # fmt: skip
            metadata = self._decoder.get_stream_metadata()
        except Exception as exc:
            self._copier.close()
            raise SourceError(f"NVDEC cannot decode {path}: {exc}", retryable=False) from None
        self.fps = float(getattr(metadata, "average_fps", 0) or 0) or None
        # The end is known from the container's index: asking SimpleDecoder for the frame past it prints
        # "INVALID INDEX <n>" on every loop of every camera (0 = unknown: ask until it returns nothing).
        self._frame_count = int(getattr(metadata, "num_frames", 0) or 0)
        self._index = 0  # frames grabbed since the start (or the last rewind)
        self._grabbed = None

    def grab(self) -> bool:
        """The next frame decoded by NVDEC (in the decoder's own surface, until ``retrieve`` copies it)."""
        self._copier.await_last_copy()
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
        image = self._copier.copy(frame)
        if image is None:
            return None, None
        return image, file_pts_ms((self._index - 1) * 1000.0 / self.fps) if self.fps else None

    @property
    def width(self) -> int:
        return self._copier.size[0]

    @property
    def height(self) -> int:
        return self._copier.size[1]

    def rewind(self) -> bool:
        self._decoder.seek_to_index(0)
        self._index = 0
        return True

    def close(self) -> None:
        self._decoder = None
        self._copier.close()


class NvdecStreamProducer:
    """A network camera decoded by NVDEC (``decoder = "nvdec"`` on an rtsp/http(s)/... URL): packets from a
    demuxer process (:mod:`daemon.demux`: PyNvVideoCodec's demuxer keeps the GIL while it waits for the
    network, so never in the daemon's interpreter), decoded here by PyNvVideoCodec's decoder, copied out
    as :class:`NvdecProducer` does. A stall (no packet within the read timeout) or the demuxer's end
    reads as "no frame": the reader reconnects with its backoff."""

    def __init__(self, packets: Any, pool_size: int, stop: threading.Event, gpu: int = 0, picture_timeout_s: float = 10.0):
        """``packets``: a :class:`daemon.demux.PacketStream`, its header read (closed with this producer).
        ``picture_timeout_s``: packets that give no picture for this long (missing parameter sets, a
        stream NVDEC cannot parse) read as "no frame", as a stall does."""
        try:
            nvc = _pynvvideocodec()
        except SourceError:
            packets.close()
            raise
        header = packets.header
        codec = getattr(nvc.cudaVideoCodec, NVDEC_CODECS.get(header.codec, ""), None)
        if codec is None:
            packets.close()
            raise SourceError(f"NVDEC does not decode {header.codec!r} streams (use decoder = 'opencv')", retryable=False)
        self._nvc = nvc
        self._packets = packets
        self._stop = stop
        self._picture_timeout_s = picture_timeout_s
        try:
            self._copier = FrameCopier(pool_size, stop)
        except Exception as exc:
            packets.close()
            raise SourceError(f"NVDEC: cannot prepare the frame copies: {exc}", retryable=True) from None
        try:
            self._decoder = nvc.CreateDecoder(gpuid=gpu, codec=codec, cudacontext=cuda.primary_context_handle(gpu),
                                              cudastream=self._copier.stream.handle, usedevicememory=True)
        except Exception as exc:
            self._copier.close()
            packets.close()
            raise SourceError(f"NVDEC cannot decode this {header.codec} stream: {exc}", retryable=False) from None
        self.fps = header.fps
        self._header_size = (header.width, header.height)  # until the first frame says
        self._prefix = header.extradata  # out-of-band parameter sets, in front of the first packet
        self._decoded: collections.deque = collections.deque()
        self._grabbed = None

    def grab(self) -> bool:
        self._copier.await_last_copy()
        self._grabbed = None
        deadline = time.monotonic() + self._picture_timeout_s
        while not self._decoded:
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                log.warning("%s: packets but no picture for %g s; reconnecting", self._packets.shown, self._picture_timeout_s)
                return False
            try:
                packet = self._packets.read()
            except SourceError as exc:
                log.warning("%s", exc)
                return False
            if packet is None:
                return False
            try:
                self._decoded.extend(self._decode(self._prefix + packet.data if self._prefix else packet.data))
            except Exception as exc:  # NVDEC refused the stream (a size past the decoder's, a broken picture): reconnect
                log.warning("%s: NVDEC decoding failed (%s); reconnecting", self._packets.shown, mask_text(str(exc)) or type(exc).__name__)
                return False
            self._prefix = b""
        self._grabbed = self._decoded.popleft()
        return True

    def _decode(self, data: bytes) -> list:
        """One packet through NVDEC: the frames it completed (none, one, or more with reordering)."""
        payload = np.frombuffer(data, np.uint8)  # alive until Decode returns: the parser copies what it needs
        packet = self._nvc.PacketData()
        packet.bsl_data = payload.ctypes.data
        packet.bsl = payload.size
        return list(self._decoder.Decode(packet))

    def retrieve(self):
        frame, self._grabbed = self._grabbed, None
        return self._copier.copy(frame), None  # a camera's frames carry no file position

    @property
    def width(self) -> int:
        return self._copier.size[0] or self._header_size[0]

    @property
    def height(self) -> int:
        return self._copier.size[1] or self._header_size[1]

    def rewind(self) -> bool:
        return False

    def close(self) -> None:
        self._decoded.clear()
        self._grabbed = None
        self._decoder = None
        self._copier.close()
        self._packets.close()
