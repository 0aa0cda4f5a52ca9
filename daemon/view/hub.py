"""The live view's hub: frames of watched sources in from the completer, annotated JPEGs out to viewers.

Three sides, one owner each:

* **The completer** (the scheduler's thread) calls :meth:`ViewHub.capture` on each completed batch before
  the frames' pixels are dropped, and :meth:`ViewHub.offer` once the analytics have added track ids. For
  a source nobody watches that is one set lookup per frame: no copy, no drawing, no encoding. For a
  watched source, at most ``view.fps`` frames a second are kept: a host frame by reference (readers
  never reuse a frame's array), a pooled pinned frame as a copy (its buffer goes back to the pool when
  the batch completes), an NVDEC frame downloaded to host memory (NV12, converted later).
* **The drawing thread** (``view``) takes them from a bounded queue (the oldest dropped and counted when
  it is full: the view never holds up inference), scales, draws and encodes them, and keeps the newest
  picture per source.
* **Viewers** (HTTP threads) register with :meth:`watch` while they look, and wait in
  :meth:`next_picture` for a picture newer than the one they have. A slow viewer simply gets the newest
  picture when it asks: no per-viewer queue to grow.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..entities import DeviceFrame, FrameResult, PooledImage
from ..opsconfig import ViewConfig
from ..threadname import name_this_thread
from .annotate import Regions, annotate

__all__ = ["Picture", "ViewHub", "ViewStats"]

log = logging.getLogger("trtstream.view")


@dataclass(frozen=True, slots=True)
class Picture:
    """One annotated frame, encoded. ``seq`` counts this source's pictures from 1."""

    seq: int
    jpeg: bytes
    width: int
    height: int
    frame_index: int
    t_captured: float


@dataclass
class ViewStats:
    """Counters of the view (each written by one thread, read by anyone)."""

    frames_captured: int = 0  # completer
    frames_dropped: int = 0  # completer: the drawing queue was full
    pictures: int = 0  # drawing thread
    draw_errors: int = 0  # drawing thread

    def snapshot(self) -> dict[str, int]:
        return {"frames_captured": self.frames_captured, "frames_dropped": self.frames_dropped, "pictures": self.pictures,
                "draw_errors": self.draw_errors}  # fmt: skip


class _Nv12:
    """An NVDEC frame downloaded to host memory: ``rows`` = height × 3/2 rows of ``pitch`` bytes."""

    __slots__ = ("rows", "width")

    def __init__(self, rows: np.ndarray, width: int):
        self.rows, self.width = rows, width

    def to_bgr(self) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(self.rows[:, : self.width]), cv2.COLOR_YUV2BGR_NV12)


@dataclass(slots=True)
class _Pending:
    source_id: str
    pixels: Any  # np.ndarray (BGR) or _Nv12
    detections: list
    frame_index: int
    t_captured: float


class ViewHub:
    """See the module doc. ``counters``: the analytics snapshot (zone occupancy, line counts) to draw."""

    def __init__(self, config: ViewConfig, regions: Mapping[str, Regions] | None = None,
                 counters: Callable[[], Mapping[str, Any] | None] = lambda: None):
        self.config = config
        self.stats = ViewStats()
        self._interval = 1.0 / config.fps
        self._regions: Mapping[str, Regions] = dict(regions or {})  # replaced whole (reload)
        self._counters = counters
        # viewers: counts under _watch_lock; ``watched`` is replaced whole, and the completer reads it bare
        self._watch_lock = threading.Lock()
        self._watchers: dict[str, int] = {}
        self.watched: frozenset[str] = frozenset()
        # the completer's own
        self._seen_watched: frozenset[str] = frozenset()
        self._due: dict[str, float] = {}
        self._download_stream: Any = None
        # completer -> drawing thread
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_ready = threading.Condition(threading.Lock())
        # drawing thread -> viewers
        self._pictures: dict[str, Picture] = {}
        self._new_picture = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="view", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the drawing thread and wake every waiting viewer (their streams end)."""
        self._stopping = True
        with self._pending_ready:
            self._pending_ready.notify_all()
        with self._new_picture:
            self._new_picture.notify_all()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self._download_stream is not None:
            self._download_stream.close()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def set_regions(self, regions: Mapping[str, Regions]) -> None:
        """A reload's zones and lines (drawn from the next picture on)."""
        self._regions = dict(regions)

    # -- viewers (HTTP threads) --------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, source_id: str) -> Iterator[None]:
        """While inside, ``source_id``'s frames are drawn (at most ``view.fps`` a second)."""
        with self._watch_lock:
            self._watchers[source_id] = self._watchers.get(source_id, 0) + 1
            self.watched = frozenset(self._watchers)
        try:
            yield
        finally:
            with self._watch_lock:
                left = self._watchers[source_id] - 1
                if left:
                    self._watchers[source_id] = left
                else:
                    del self._watchers[source_id]
                self.watched = frozenset(self._watchers)

    def viewers(self) -> int:
        with self._watch_lock:
            return sum(self._watchers.values())

    def latest(self, source_id: str) -> Picture | None:
        return self._pictures.get(source_id)

    def next_picture(self, source_id: str, after: int, timeout: float) -> Picture | None:
        """The newest picture of ``source_id`` with ``seq > after``, waiting up to ``timeout`` seconds for
        one; None on timeout or when the view stops."""
        deadline = time.monotonic() + timeout
        with self._new_picture:
            while not self._stopping:
                picture = self._pictures.get(source_id)
                if picture is not None and picture.seq > after:
                    return picture
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._new_picture.wait(left)
        return None

    # -- the completer -----------------------------------------------------------------------------
    def capture(self, frames: list) -> dict[int, Any]:
        """Pixels of the frames the view wants (keyed by ``id(frame)``), taken before the batch lets go
        of them. Only for watched sources, at most ``view.fps`` per source."""
        watched = self.watched
        if not watched:
            return {}
        if watched is not self._seen_watched:  # someone started watching: their first picture comes at once
            for source_id in watched - self._seen_watched:
                self._due.pop(source_id, None)
            self._seen_watched = watched
        taken: dict[int, Any] = {}
        now = time.monotonic()
        for frame in frames:
            source_id = frame.source_id
            if source_id not in watched or now < self._due.get(source_id, 0.0):
                continue
            try:
                pixels = self._host_pixels(frame.image)
            except Exception as exc:  # never the batch's problem
                log.warning("view: cannot take a frame of %s: %s", source_id, exc)
                continue
            if pixels is not None:
                taken[id(frame)] = pixels
                self._due[source_id] = now + self._interval
        return taken

    def _host_pixels(self, image: Any) -> Any:
        if isinstance(image, DeviceFrame):
            return self._download(image)
        if not isinstance(image, np.ndarray):  # its pixels are gone already (an ImageShape)
            return None
        if isinstance(image, PooledImage):  # a pinned pool buffer, reused once the batch completes
            return np.array(image, copy=True)
        return image  # the frame's own array: nobody writes to it again

    def _download(self, image: DeviceFrame) -> _Nv12:
        """An NV12 device frame into host memory (the batch that read it has completed, so it is ready)."""
        from .. import cuda

        if self._download_stream is None:
            self._download_stream = cuda.Stream()
        pitch, height = image.pitch, image.height
        rows = np.empty((height + height // 2, pitch), np.uint8)
        cuda.memcpy_dtoh_async(rows[:height], image.y_ptr, self._download_stream)
        cuda.memcpy_dtoh_async(rows[height:], image.uv_ptr, self._download_stream)
        self._download_stream.synchronize()
        return _Nv12(rows, image.width)

    def offer(self, results: list[FrameResult], captured: Mapping[int, Any]) -> None:
        """Queue the captured frames with their results (after the analytics: track ids are in)."""
        if not captured:
            return
        with self._pending_ready:
            for result in results:
                pixels = captured.get(id(result.frame))
                if pixels is None:
                    continue
                if len(self._pending) >= self.config.queue_size:
                    self._pending.popleft()
                    self.stats.frames_dropped += 1
                frame = result.frame
                self._pending.append(_Pending(frame.source_id, pixels, result.results.get("detections", []), frame.index, frame.t_captured))
                self.stats.frames_captured += 1
            self._pending_ready.notify()

    # -- the drawing thread ------------------------------------------------------------------------
    def _run(self) -> None:
        name_this_thread()
        while True:
            with self._pending_ready:
                while not self._pending and not self._stopping:
                    self._pending_ready.wait()
                if self._stopping:
                    return
                item = self._pending.popleft()
            try:
                picture = self._draw(item)
            except Exception:
                self.stats.draw_errors += 1
                log.exception("view: drawing a frame of %s failed", item.source_id)
                continue
            with self._new_picture:
                self._pictures[item.source_id] = picture
                self._new_picture.notify_all()
            self.stats.pictures += 1

    def _draw(self, item: _Pending) -> Picture:
        image = item.pixels.to_bgr() if isinstance(item.pixels, _Nv12) else item.pixels
        height, width = image.shape[:2]
        scale = min(1.0, self.config.width / width)
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        else:
            image = image.copy()  # drawn on: never the frame's own array
        counters = (self._counters() or {}).get(item.source_id, {})
        annotate(image, item.detections, scale, (width, height), self._regions.get(item.source_id, Regions()), counters)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        previous = self._pictures.get(item.source_id)
        return Picture((previous.seq if previous else 0) + 1, jpeg.tobytes(), image.shape[1], image.shape[0], item.frame_index, item.t_captured)
