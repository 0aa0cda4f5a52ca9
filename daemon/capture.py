"""Frame producers: the only code that talks to OpenCV's VideoCapture (or makes synthetic frames).

A producer opens one source and yields BGR frames; it knows nothing about queues, threads or retries
(that is :mod:`daemon.sources`). ``open_producer`` raises :class:`SourceError` with the URI masked and
``retryable`` set by whether trying again can help (a missing file cannot; a refused RTSP connection can).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from typing import Any, Iterator, Protocol

import cv2
import numpy as np

from .config import SourceConfig, SourceKind, parse_synthetic_uri
from .errors import SourceError
from .redact import mask_text, mask_url

__all__ = ["FrameProducer", "open_producer", "read_frame", "gstreamer_available", "file_pts_ms"]

log = logging.getLogger("trtstream.capture")


class FrameProducer(Protocol):
    """An opened source."""

    fps: float | None  # native frame rate when known
    width: int
    height: int

    def grab(self) -> bool:
        """Take the next frame from the source (decoded as far as the codec needs to go on), without
        converting or copying it out; False at the end or on an error. The reader grabs, then decides:
        a frame a full queue would only drop is never retrieved (``sources[].skip_when_full``)."""

    def retrieve(self) -> tuple[Any, float | None]:
        """The grabbed frame (BGR, or a device image for NVDEC) and its position in the file in ms
        (:func:`file_pts_ms`; None for live sources, which have no position), or (None, None) on error."""

    def rewind(self) -> bool:
        """Go back to the first frame (files); False when not possible."""

    def close(self) -> None: ...


def read_frame(producer: FrameProducer) -> tuple[Any, float | None]:
    """``grab`` then ``retrieve``: the next frame and its position, or (None, None) at the end or on an
    error (for callers that keep every frame; the reader grabs and decides before it retrieves)."""
    return producer.retrieve() if producer.grab() else (None, None)


PTS_DECIMALS = 3  # microseconds: finer than any frame interval, coarse enough to drop binary noise


def file_pts_ms(milliseconds: float) -> float:
    """A file position for ``frame.pts_ms``, rounded to the microsecond. Containers store timestamps in
    integer time-base units that FFmpeg converts to milliseconds in binary floating point, so frame 35
    of a 25 fps file comes out as 1400.0000000000002; subscribers compare and key on these values."""
    return round(milliseconds, PTS_DECIMALS)


@functools.cache
def gstreamer_available() -> bool:
    """Whether this OpenCV build has the GStreamer backend."""
    info = cv2.getBuildInformation()
    return bool(re.search(r"GStreamer:\s+YES", info))


class OpenCVProducer:
    """A ``cv2.VideoCapture`` for files, network streams, USB cameras and GStreamer pipelines.

    ``pinned_frames`` > 0 (GPU preprocessing): frames are decoded straight into a pool of that many pinned
    buffers (:mod:`daemon.pinned`), created at the first frame's size and again if the size changes: a
    frame of another size is never forced into a buffer of the old one (OpenCV allocates it in ordinary
    memory, and the pool is re-made at the new size). ``width``/``height`` follow the last frame.

    Known limit: OpenCV's FFmpeg backend (opencv-python 5.0) converts every decoded picture to the
    stream's *initial* size, so a file or stream whose resolution changes mid-stream (joined clips, a
    reconfigured camera) arrives here already rescaled, and nothing in its API reports the real size.
    Image sequences (CAP_IMAGES), NVDEC and ``decoder = "pyav"`` (:class:`PyAVProducer`) deliver each
    frame at its own size."""

    def __init__(self, capture: cv2.VideoCapture, kind: SourceKind, pinned_frames: int = 0):
        self._capture = capture
        self._kind = kind
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._pinned_frames = pinned_frames
        self._pool = None

    def grab(self) -> bool:
        """FFmpeg decodes the packet (the codec needs it as a reference); the picture is neither converted
        to BGR nor copied out until ``retrieve``: a frame never retrieved costs 0.73-0.75 of one that is
        (1080p, ``trtstream bench decode``)."""
        return bool(self._capture.grab())

    def retrieve(self) -> tuple[np.ndarray | None, float | None]:
        target = self._pool.take() if self._pool is not None else None
        ok, image = self._capture.retrieve(target) if target is not None else self._capture.retrieve()
        if target is not None and (image is None or image.ctypes.data != target.ctypes.data):
            target.release()  # OpenCV allocated instead (no frame, or another size/format)
        if not ok or image is None:
            return None, None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if self._pinned_frames and (self._pool is None or self._pool.shape != image.shape) and image.ndim == 3:
            self._new_pool(image.shape)
        self.height, self.width = image.shape[:2]
        pts = file_pts_ms(self._capture.get(cv2.CAP_PROP_POS_MSEC)) if self._kind is SourceKind.FILE else None
        return image, pts

    def retrieve_into(self, target: np.ndarray) -> bool:
        """Convert the grabbed frame straight into ``target`` (a slot of a decoding process's shared memory,
        :mod:`daemon.cpudecodechild`). False when there is none, or it is not of ``target``'s size and
        format (OpenCV then converted it into memory of its own, and ``target`` is untouched)."""
        ok, image = self._capture.retrieve(target)
        return bool(ok) and image is not None and image.ctypes.data == target.ctypes.data

    def _new_pool(self, shape: tuple[int, ...]) -> None:
        from .pinned import PinnedImagePool

        if self._pool is not None:
            self._pool.close()
        try:
            self._pool = PinnedImagePool(self._pinned_frames, shape)
        except Exception as exc:  # out of pinned memory: decode into ordinary memory, as without a GPU
            log.warning("no pinned frame buffers (%s); decoding into ordinary memory", exc)
            self._pinned_frames, self._pool = 0, None

    def rewind(self) -> bool:
        return bool(self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        self._capture.release()
        if self._pool is not None:
            self._pool.close()


class PyAVProducer:
    """Files and network streams decoded by PyAV (``decoder = "pyav"``): each frame at its real size.

    OpenCV's FFmpeg backend rescales every picture to the stream's first size and hides the change;
    PyAV hands over each decoded picture as it is, so a camera reconfigured mid-stream, or clips joined
    into one file, give results in the frame's own pixels. Frames are converted to BGR by FFmpeg
    (``to_ndarray(format="bgr24")``) in ordinary memory (no pinned pool: GPU preprocessing copies them
    into its staging area). PyAV is optional (``pip install 'trtstream[pyav]'``)."""

    def __init__(self, container: Any, kind: SourceKind):
        import av

        self._errors = (av.error.FFmpegError, OSError)  # what ends a read or a seek (resolved once, not per frame)
        self._container = container
        self._kind = kind
        self._stream = container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame and slice threads, as OpenCV's FFmpeg uses
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.fps = fps if 0 < fps < 1000 else None
        self.width = int(self._stream.codec_context.width)
        self.height = int(self._stream.codec_context.height)
        self._frames = container.decode(self._stream)
        self._grabbed: Any = None  # the frame grab() decoded, until retrieve()

    def grab(self) -> bool:
        """The next frame decoded (not yet converted to BGR)."""
        try:
            self._grabbed = next(self._frames)
        except (StopIteration, *self._errors):
            self._grabbed = None
        return self._grabbed is not None

    def retrieve(self) -> tuple[np.ndarray | None, float | None]:
        frame, self._grabbed = self._grabbed, None
        if frame is None:
            return None, None
        image = frame.to_ndarray(format="bgr24")
        self.height, self.width = image.shape[:2]
        pts = file_pts_ms(frame.time * 1000) if self._kind is SourceKind.FILE and frame.time is not None else None
        return image, pts

    def rewind(self) -> bool:
        try:
            self._container.seek(0)
        except self._errors:
            return False
        self._frames = self._container.decode(self._stream)
        return True

    def close(self) -> None:
        self._container.close()


def open_pyav(source: SourceConfig, kind: SourceKind, shown: str) -> PyAVProducer:
    """A file or stream opened by PyAV, with the source's open and read timeouts (network)."""
    try:
        import av
    except ImportError:
        raise SourceError(f"decoder = 'pyav' needs PyAV (pip install 'trtstream[pyav]'), cannot open: {shown}", retryable=False) from None
    timeout = (source.reconnect.open_timeout_s, source.reconnect.read_timeout_s) if kind is SourceKind.STREAM else None
    try:
        container = av.open(source.uri, mode="r", timeout=timeout, options=rtsp_options(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open {kind.value} source: {shown} ({mask_text(str(exc))})", retryable=kind is not SourceKind.FILE) from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"no video stream in {shown}", retryable=False)
    return PyAVProducer(container, kind)


class SyntheticProducer:
    """A moving test pattern (colour bars plus a sliding box); needs no file, camera or network."""

    def __init__(self, width: int, height: int, fps: float):
        self.width, self.height, self.fps = width, height, fps
        self._index = 0
        bars = np.array(
            [[192, 192, 192], [0, 192, 192], [192, 192, 0], [0, 192, 0], [192, 0, 192], [0, 0, 192], [192, 0, 0]],
            dtype=np.uint8,
        )
        columns = (np.arange(width) * len(bars)) // width
        self._background = np.ascontiguousarray(np.broadcast_to(bars[columns][None], (height, width, 3)))

    def grab(self) -> bool:
        self._index += 1
        return True

    def retrieve(self) -> tuple[np.ndarray | None, None]:
        """The grabbed pattern frame; no pts: a synthetic source stands in for a camera (it is paced and
        drops its oldest frames like one), and live sources have no position (``frame.pts_ms`` null)."""
        image = self._background.copy()
        size = max(8, min(self.width, self.height) // 4)
        x = ((self._index - 1) * 7) % max(1, self.width - size)
        y = (self.height - size) // 2
        image[y : y + size, x : x + size] = 255
        return image, None

    def rewind(self) -> bool:
        self._index = 0
        return True

    def close(self) -> None:
        pass


# OpenCV 4.7 added this capture property; older system builds (Debian's 4.6) decode with FFmpeg's own
# thread count, as before.
_N_THREADS = getattr(cv2, "CAP_PROP_N_THREADS", None)


def decoder_threads(count: int) -> list[int]:
    """The capture parameters that bound FFmpeg's decoding threads to ``count`` (``sources[].decoder_threads``;
    0: FFmpeg's own choice): by default FFmpeg starts one per core plus one for every capture, 33 threads per
    camera were measured in the daemon on a 16-core machine, and a hundred cameras then fight over the cores
    they share."""
    if _N_THREADS is None or count == 0:
        return []
    return [_N_THREADS, count]


def rtsp_options(source: SourceConfig) -> dict[str, str]:
    """FFmpeg options for the source's RTSP transport (``sources[].rtsp_transport``; none for 'auto')."""
    return {} if source.rtsp_transport == "auto" else {"rtsp_transport": source.rtsp_transport}


_CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# What OpenCV itself sets when that variable is absent (cap_ffmpeg_impl.hpp): TCP first, then UDP.
_OPENCV_DEFAULT_OPTIONS = "rtsp_flags;prefer_tcp"
_capture_options_lock = threading.Lock()


@contextlib.contextmanager
def ffmpeg_capture_options(options: dict[str, str]) -> Iterator[None]:
    """FFmpeg options for the OpenCV capture opened inside. OpenCV takes them only from the environment
    (``OPENCV_FFMPEG_CAPTURE_OPTIONS``, read as a capture opens; its VideoCapture parameters have no
    transport), so the variable is set for the open, such opens are serialised, and what the user had
    set stays (ours come after it: FFmpeg lets a later key win). Afterwards the variable is put back,
    or, where there was none, set to what OpenCV uses without one: never removed, because removing a
    variable rearranges the environment under another thread's ``getenv`` (a file capture opening),
    while replacing one swaps a single pointer. Without options nothing is touched."""
    if not options:
        yield
        return
    ours = "|".join(f"{key};{value}" for key, value in options.items())
    with _capture_options_lock:
        before = os.environ.get(_CAPTURE_OPTIONS)
        os.environ[_CAPTURE_OPTIONS] = f"{before}|{ours}" if before else ours
        try:
            yield
        finally:
            os.environ[_CAPTURE_OPTIONS] = before if before is not None else _OPENCV_DEFAULT_OPTIONS


def resolve_decoder(source: SourceConfig, device_frames: bool) -> str:
    """The decoder a source gets: its own, or for ``decoder = "auto"`` NVDEC where it can serve (a file or
    network stream, a backend that takes device frames with GPU preprocessing, PyNvVideoCodec importable)
    and OpenCV elsewhere."""
    if source.decoder != "auto":
        return source.decoder
    if device_frames and source.resolved_kind in (SourceKind.FILE, SourceKind.STREAM):
        from .gpu.nvdec import nvdec_available

        if nvdec_available():
            return "nvdec"
    return "opencv"


class AutoDecoderFactory:
    """``decoder = "auto"`` resolved to NVDEC: opens with NVDEC, and for good with OpenCV once NVDEC refuses
    the source for a reason a retry cannot change (a codec it does not decode): the camera keeps working,
    one log line says why. One per source reader (its thread alone calls it)."""

    def __init__(self, pinned_frames: int = 0, copy_frames: bool = False):
        self._pinned_frames = pinned_frames
        self._copy_frames = copy_frames
        self._opencv = False

    def __call__(self, source: SourceConfig, stop: "threading.Event | None" = None) -> FrameProducer:
        if not self._opencv:
            try:
                return open_producer(source.model_copy(update={"decoder": "nvdec"}), stop)
            except SourceError as exc:
                if exc.retryable:
                    raise
                log.warning("source %s: %s; decoding it with OpenCV instead (decoder = 'auto')", source.id, exc)
                self._opencv = True
        return open_producer(source.model_copy(update={"decoder": "opencv"}), stop, self._pinned_frames, self._copy_frames)


def open_producer(source: SourceConfig, stop: "threading.Event | None" = None, pinned_frames: int = 0, copy_frames: bool = False) -> FrameProducer:
    """Open a source, or raise SourceError (URI masked) saying whether a retry may help. ``pinned_frames``:
    the size of the pinned frame pool for OpenCV sources (0: ordinary memory). ``copy_frames``: frames are
    used after their batch completed (thumbnails), so pooled shared memory is copied out."""
    kind = source.resolved_kind
    shown = mask_url(source.uri)
    if kind is SourceKind.FILE and not os.path.isfile(source.uri):  # every decoder's answer, before any starts
        raise SourceError(f"file not found: {shown}", retryable=False)
    if source.decode_process and source.decoder == "opencv":  # decoded in a process of its own (daemon/cpudecodeproc.py)
        from .cpudecodeproc import OpenCvProcessProducer

        return OpenCvProcessProducer(source, stream=kind is SourceKind.STREAM, slots=max(pinned_frames, source.queue_size + 6),
                                     pin=pinned_frames > 0, copy_frames=copy_frames, stop=stop)
    if source.decoder == "nvdec":
        if source.decode_process:  # demuxed, decoded and copied in a process of its own (daemon/gpu/nvdecproc.py)
            from .gpu.nvdecproc import NvdecProcessProducer

            return NvdecProcessProducer(source.uri, stream=kind is SourceKind.STREAM, slots=source.queue_size + 32,
                                        open_timeout_s=source.reconnect.open_timeout_s, read_timeout_s=source.reconnect.read_timeout_s,
                                        rtsp_transport=source.rtsp_transport, stop=stop)
        if kind is SourceKind.STREAM:  # demuxed in a process of its own (daemon/demux.py says why), decoded here
            from .demux import PacketStream
            from .gpu.nvdec import NvdecStreamProducer

            packets = PacketStream(source.uri, open_timeout_s=source.reconnect.open_timeout_s,
                                   read_timeout_s=source.reconnect.read_timeout_s, rtsp_transport=source.rtsp_transport)
            return NvdecStreamProducer(packets, source.queue_size + 32, stop or threading.Event(),
                                       picture_timeout_s=max(source.reconnect.read_timeout_s, 5.0))
        from .gpu.nvdec import NvdecProducer

        return NvdecProducer(source.uri, source.queue_size + 32, stop or threading.Event())
    if kind is SourceKind.SYNTHETIC:
        return SyntheticProducer(*parse_synthetic_uri(source.uri))
    if source.decoder == "pyav":
        return open_pyav(source, kind, shown)
    if kind is SourceKind.FILE:
        capture = cv2.VideoCapture(source.uri, cv2.CAP_FFMPEG, decoder_threads(source.resolved_decoder_threads))
        if not capture.isOpened():  # not FFmpeg's (a build whose files go through another backend): any backend
            capture.release()
            capture = cv2.VideoCapture(source.uri)
    elif kind is SourceKind.STREAM:
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(source.reconnect.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(source.reconnect.read_timeout_s * 1000),
        ]
        with ffmpeg_capture_options(rtsp_options(source)):
            capture = cv2.VideoCapture(source.uri, cv2.CAP_FFMPEG, timeouts + decoder_threads(source.resolved_decoder_threads))
    elif kind is SourceKind.USB:
        device = source.uri.removeprefix("usb:")
        capture = cv2.VideoCapture(int(device) if device.isdigit() else device)
    elif kind is SourceKind.GSTREAMER:
        if not gstreamer_available():
            raise SourceError(f"this OpenCV build has no GStreamer support, cannot open pipeline: {shown}", retryable=False)
        capture = cv2.VideoCapture(source.uri, cv2.CAP_GSTREAMER)
    else:  # pragma: no cover - exhaustive over SourceKind
        raise SourceError(f"unknown source kind {kind}", retryable=False)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open {kind.value} source: {shown}", retryable=not source.ends_by_itself)
    return OpenCVProducer(capture, kind, pinned_frames)
