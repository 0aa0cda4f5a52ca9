"""OpenCV decoding in processes beside the daemon (``sources[].decode_process = true`` with
``decoder = "opencv"``): a camera is opened, decoded and converted to BGR in a decoding process
(:mod:`daemon.cpudecodechild`), straight into shared host memory the daemon made, and the daemon's reader
only takes a 16-byte record per frame.

Why: measured on the H200's 16 cores, 45 OpenCV cameras in the daemon (0.92 x what the machine decodes
with no inference) published only 0.59 x that ceiling and dropped 32 %, with 3 of the 16 cores idle: the
batcher took 1 ms per frame gathering, waiting for the GIL behind 45 reader threads whose decode calls
release and retake it several times a frame (docs/benchmarks.md). In a decoding process those calls share
a GIL with at most :data:`daemon.decodechild.CAMERAS_PER_PROCESS` cameras, not with the pipeline.

How: :mod:`daemon.decodeproc` (the handover every decoding process shares). The frame pool is the
camera's ``memfd`` of slot bytes, grown by ``slots`` BGR frames when the first frame's size is known, and
mapped on both sides. With GPU preprocessing the daemon page-locks its mapping (``cudaHostRegister``), so
the batch's copy to the device goes from the slot itself, as from a pinned frame pool
(:mod:`daemon.pinned`); if that fails (logged once) the frames are ordinary memory and are staged as
such. A frame is the daemon's from its record until its batch completed or the queue dropped it; with
thumbnails (which the publisher encodes after that), each frame is copied out and its slot given back at
once.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading

import numpy as np

from . import cuda
from .config import SourceConfig
from .decodeproc import ProcessProducer, SlotAccounts
from .pinned import PinnedImage, PooledArray

__all__ = ["OpenCvProcessProducer", "SlotImage"]

log = logging.getLogger("trtstream.capture")

_pin_warning = threading.Event()  # "cannot page-lock": once per daemon, not per camera


class SlotImage(PooledArray):
    """A BGR frame in a slot of a decoding process's shared memory, not page-locked (no GPU, or
    ``cudaHostRegister`` refused it): it gives its slot back on ``release()``. Page-locked slots are
    :class:`daemon.pinned.PinnedImage`, which the GPU runtime copies from in place."""

    _slot: int


class _HostSlotPool(SlotAccounts):
    """The daemon's side of one camera's BGR frames in shared host memory: the mapping and its page-lock
    (and the slot bookkeeping of :class:`daemon.decodeproc.SlotAccounts`). The page-lock is undone after
    the camera closed, its decoding thread let go and the last frame came back; the mapping goes with the
    last view of it."""

    def __init__(self, flags: mmap.mmap, flags_fd: int, slots: int, width: int, height: int, pin: bool):
        super().__init__(flags)
        self.width, self.height = width, height
        self.offset = -(-slots // mmap.PAGESIZE) * mmap.PAGESIZE  # the frames start on the page after the slot bytes
        nbytes = slots * width * height * 3
        os.ftruncate(flags_fd, self.offset + nbytes)
        self._map = mmap.mmap(flags_fd, nbytes, offset=self.offset)
        frames = np.frombuffer(self._map, np.uint8).reshape(slots, height, width, 3)
        self._registration = self._page_lock(frames) if pin else None
        kind = PinnedImage if self._registration is not None else SlotImage
        self._images = []
        for slot in range(slots):
            image = frames[slot].view(kind)
            image._pool, image._slot = self, slot
            self._images.append(image)

    def image(self, slot: int) -> np.ndarray:
        self._taken()
        image = self._images[slot]
        image._released = False
        return image

    def give_back(self, image: np.ndarray) -> None:
        self._returned(image._slot)

    def _free(self) -> None:
        registration, self._registration = self._registration, None
        if registration is not None:
            registration.close()
        self._images = []

    @staticmethod
    def _page_lock(frames: np.ndarray) -> "cuda.HostRegistration | None":
        try:
            return cuda.HostRegistration(frames)
        except Exception as exc:  # no CUDA here, or a driver that refuses shared memory: ordinary memory then
            if not _pin_warning.is_set():
                _pin_warning.set()
                log.warning("cannot page-lock the decoding processes' frame memory (%s): its frames are staged as ordinary memory", exc)
            return None


class OpenCvProcessProducer(ProcessProducer):
    """A file or network stream decoded by OpenCV in a decoding process: its frames BGR in shared host
    memory (module docstring). ``source``: the camera as configured (the child opens it with the same
    options); ``pin``: page-lock the frames (GPU preprocessing); ``copy_frames``: hand out copies and give
    each slot back at once (thumbnails)."""

    CHILD = "daemon.cpudecodechild"
    CHILD_WHAT = "its OpenCV decoding process"

    def __init__(self, source: SourceConfig, *, stream: bool, slots: int, pin: bool = False, copy_frames: bool = False,
                 stop: threading.Event | None = None):
        self._pin = pin
        self._copy_frames = copy_frames
        opened = source.model_copy(update={"decode_process": False, "decoder": "opencv",  # the child opens it in place
                                           "decoder_threads": source.resolved_decoder_threads})
        super().__init__(source.uri, stream=stream, slots=slots, open_timeout_s=source.reconnect.open_timeout_s,
                         read_timeout_s=source.reconnect.read_timeout_s, settings={"source": opened.model_dump(mode="json")}, stop=stop)

    def retrieve(self):
        image, pts = super().retrieve()
        if image is not None and self._copy_frames:
            copied = np.array(image)
            image.release()
            return copied, pts
        return image, pts

    def _start_pool(self, width: int, height: int) -> bool:
        if width <= 0 or height <= 0:
            log.warning("%s: the decoding process reported a frame of %dx%d; reconnecting", self._shown, width, height)
            return False
        try:
            self._pool = _HostSlotPool(self._flags, self._flags_fd, self._slots, width, height, self._pin)
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot make shared frame memory for its decoding process: %s; reconnecting", self._shown, exc)
            return False
        if not self._command({"pool": {"offset": self._pool.offset}}):
            log.warning("%s", self._failure("its decoding thread went away before it took its frame memory"))
            return False
        return True
