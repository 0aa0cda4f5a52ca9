"""NVDEC decoding in a process of its own (``sources[].decode_process = true``): the camera's demuxing,
decoding and frame copies run beside the daemon's interpreter, and the daemon's reader only takes a
16-byte record per frame.

Why: every reader thread of the daemon shares one GIL with the batcher, the completer and the
publisher. With 96 NVDEC cameras on the H200 the readers used 1.0-1.4 cores under that GIL (their
decode calls, frame copies, event records and packet reads), and they were the limit once tracking had
moved out (docs/benchmarks.md). Here each camera's child has a GIL of its own.

How: the daemon allocates the frame pool (``slots`` NV12 frames in one ``cudaMalloc``) when the child
reports the first frame's size, and gives the child its IPC handle (:func:`daemon.cuda.ipc_memory_handle`).
The memory stays the daemon's: a child that dies cannot free a frame a batch is still reading. The child
decodes into PyNvVideoCodec's surfaces, copies each frame into a free slot, waits for that copy (so a
frame is complete when its record arrives and needs no event across processes) and writes
``(kind, slot, index)``. Which slots are free is a byte per slot in shared memory (a ``memfd``): the
child sets it when it fills the slot, the daemon clears it when the frame's batch has completed or the
queue dropped it — a byte written under the GIL, no system call, nothing for the completer to wait for.
A full pool is backpressure: the child waits for a slot.

Files are decoded with ``SimpleDecoder`` as :class:`daemon.gpu.nvdec.NvdecProducer` does, and at their
end the child waits for ``rewind``; network streams are demuxed in the child (:func:`daemon.demux.run_demuxer`:
blocking there stalls no one else) and decoded with ``CreateDecoder``. A stall (no frame within the read
timeout) or the child's error reads as "no frame": the reader reconnects (a new child) with its backoff,
as for the other producers, and the child's error line (URL masked) is logged.

Wire format, child to daemon (stdout): ``MAGIC``, a 4-byte length and a JSON header (fps, frame count,
width and height when known), then 16-byte records ``<BxHIII``: kind, slot, frame index, width,
height. Kinds: ``SIZE`` (the first frame's size: the child then waits for the pool), ``FRAME``, ``END``
(a file's end). Daemon to child (stdin): JSON lines: the settings, ``{"pool": hex}``, ``{"rewind": true}``.
A clean end is the pipe closing with status 0; an error is one line on stderr and status 1 (retry may
help) or 2 (it cannot).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import time

from .. import cuda
from ..capture import file_pts_ms
from ..childproc import SourceChild
from ..entities import DeviceFrame
from ..errors import SourceError
from ..redact import mask_url
from .nvdecchild import END, FRAME, MAGIC, MAX_HEADER, RECORD, SIZE

__all__ = ["NvdecProcessProducer", "ProcessImage"]

log = logging.getLogger("trtstream.capture")

START_ALLOWANCE_S = 20.0
"""Beyond the source's own timeouts, how long the child may take to start (Python, PyNvVideoCodec, a CUDA
context): many cameras starting at once on a busy machine take seconds each."""

STARTING_AT_ONCE = 4
"""Decoding processes starting at the same time (until their first frame, or their failure): 96 cameras
starting together on the H200 made 96 CUDA contexts and NVDEC decoders at once, and most of them failed
or missed their deadline; started a few at a time, each takes well under a second."""


_start_turns = threading.BoundedSemaphore(STARTING_AT_ONCE)  # the daemon's: shared by every camera's reader


class _SlotPool:
    """The daemon's side of one child's frames: the device memory, the free/busy byte per slot, and how
    many frames are still out (queued or in a batch). Closing frees the memory once the last frame is
    back, never under a batch that reads it; a frame given back after that is ignored."""

    def __init__(self, flags: mmap.mmap, slots: int, width: int, height: int):
        self.width, self.height = width, height
        self.slot_bytes = width * height * 3 // 2
        self.memory = cuda.DeviceBuffer(self.slot_bytes * slots)
        self._flags = flags
        self._lock = threading.Lock()
        self._out = 0
        self._closing = False

    def image(self, slot: int) -> "ProcessImage":
        with self._lock:
            self._out += 1
        return ProcessImage(self, slot)

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._out -= 1
            free_now = self._closing and self._out == 0
            if not self._closing:
                self._flags[slot] = 0  # the child may fill it again
        if free_now:
            self.memory.close()

    def close(self) -> None:
        """After the child is gone: free the memory now, or when the last frame comes back."""
        with self._lock:
            self._closing = True
            free_now = self._out == 0
        if free_now:
            self.memory.close()


class ProcessImage(DeviceFrame):
    """One NV12 frame in a slot of a child's pool (daemon memory): complete when its record came, so
    ``ready`` is None."""

    def __init__(self, pool: _SlotPool, slot: int):
        self._pool = pool
        self._slot = slot
        self.width, self.height = pool.width, pool.height
        self.pitch = pool.width
        self.shape = (pool.height, pool.width, 3)
        self.nbytes = pool.slot_bytes
        self.ready = None
        self._ptr = pool.memory.ptr + slot * pool.slot_bytes
        self._released = False

    @property
    def y_ptr(self) -> int:
        return self._ptr

    @property
    def uv_ptr(self) -> int:
        return self._ptr + self.pitch * self.height

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.give_back(self._slot)


class NvdecProcessProducer:
    """A file or network stream decoded by NVDEC in a child process (module docstring): the reader's
    :class:`daemon.capture.FrameProducer`. One owner, the source's reader thread; frames it hands out
    are released from any thread."""

    def __init__(self, uri: str, *, stream: bool, slots: int, open_timeout_s: float, read_timeout_s: float,
                 rtsp_transport: str = "auto", gpu: int = 0, stop: threading.Event | None = None):
        """``stop``: the reader's; set while this waits for its turn to start (``STARTING_AT_ONCE``), it
        gives up (SourceError, retryable: the reader is stopping anyway)."""
        self._shown = mask_url(uri)
        self._holds_start_turn = False
        while not _start_turns.acquire(timeout=0.1):
            if stop is not None and stop.is_set():
                raise SourceError(f"{self._shown}: stopped while waiting to start its decoding process", retryable=True)
        self._holds_start_turn = True
        self._stream = stream
        self._slots = slots
        self._read_timeout_s = read_timeout_s
        self._pool: _SlotPool | None = None
        self._grabbed: tuple[int, int] | None = None  # (slot, index) of the frame grab() took
        self._flags_fd = os.memfd_create("trtstream-nvdec-slots", os.MFD_CLOEXEC)
        os.ftruncate(self._flags_fd, slots)
        self._flags = mmap.mmap(self._flags_fd, slots)
        settings = {"url": uri, "stream": stream, "slots": slots, "flags_fd": self._flags_fd, "gpu": gpu,
                    "open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s, "rtsp_transport": rtsp_transport}
        try:
            self._child = SourceChild("daemon.gpu.nvdecchild", self._shown, "decoding", pass_fds=(self._flags_fd,))
        except SourceError:
            self._started()
            self._close_flags()
            raise
        self._pipe = self._child.pipe
        try:
            self._child.send(settings)
            deadline = time.monotonic() + open_timeout_s + read_timeout_s + START_ALLOWANCE_S
            head = self._pipe.take(len(MAGIC) + 4, deadline)
            if head is None or head[:4] != MAGIC:
                raise self._child.failure("the decoding process sent no stream header")
            (length,) = struct.unpack("<I", head[4:])
            body = self._pipe.take(length, deadline) if length <= MAX_HEADER else None
            try:
                fields = json.loads(body) if body is not None else None
                self.fps = float(fields["fps"]) if fields and fields.get("fps") else None
                self._size = (int(fields["width"]), int(fields["height"]))
            except (ValueError, KeyError, TypeError):
                fields = None
            if fields is None:
                raise self._child.failure("the decoding process sent a broken stream header")
            self._first_deadline: float | None = deadline  # the first frame may need the decoder's start as well
        except BaseException:
            self.close()
            raise

    # -- FrameProducer --------------------------------------------------------------------------------------
    def grab(self) -> bool:
        self._drop_grabbed()
        while True:
            wait = self._read_timeout_s
            if self._first_deadline is not None:
                wait = max(wait, self._first_deadline - time.monotonic())
            record = self._pipe.take(RECORD.size, time.monotonic() + wait)
            if record is None:
                if not (self._pipe.eof and self._child.exit_status(5.0) == 0):
                    log.warning("%s", self._child.failure(f"no frame within {wait:g} s" if not self._pipe.eof else "its decoding process ended"))
                return False
            kind, slot, index, width, height = RECORD.unpack(record)
            if kind == FRAME and self._pool is not None and slot < self._slots:
                self._first_deadline = None
                self._started()
                self._grabbed = (slot, index)
                return True
            if kind == SIZE and self._pool is None:
                if not self._start_pool(width, height):
                    return False
                continue
            if kind == END:
                return False
            log.warning("%s: the decoding process sent a broken record (kind %d); reconnecting", self._shown, kind)
            return False

    def retrieve(self):
        grabbed, self._grabbed = self._grabbed, None
        if grabbed is None or self._pool is None:
            return None, None
        slot, index = grabbed
        pts = file_pts_ms(index * 1000.0 / self.fps) if not self._stream and self.fps else None
        return self._pool.image(slot), pts

    @property
    def width(self) -> int:
        return self._pool.width if self._pool is not None else self._size[0]

    @property
    def height(self) -> int:
        return self._pool.height if self._pool is not None else self._size[1]

    def rewind(self) -> bool:
        """Files: the child waits at the end for this; False for streams or a child that is gone."""
        if self._stream or self._child.process.poll() is not None:
            return False
        return self._child.send({"rewind": True})

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL), then free what no frame holds any more; idempotent."""
        self._started()
        self._drop_grabbed()
        self._child.stop()
        if self._pool is not None:
            self._pool.close()  # the child is gone: nothing writes into it any more
        self._close_flags()

    # -- internals ------------------------------------------------------------------------------------------
    def _started(self) -> None:
        """Its first frame came (or it failed, or closed): the next camera's child may start."""
        if self._holds_start_turn:
            self._holds_start_turn = False
            _start_turns.release()

    def _drop_grabbed(self) -> None:
        """A frame grabbed and not retrieved (the reader skipped it: a full queue) goes back at once."""
        grabbed, self._grabbed = self._grabbed, None
        if grabbed is not None and self._pool is not None:
            self._pool.image(grabbed[0]).release()

    def _start_pool(self, width: int, height: int) -> bool:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            log.warning("%s: the decoding process reported a frame of %dx%d; reconnecting", self._shown, width, height)
            return False
        try:
            self._pool = _SlotPool(self._flags, self._slots, width, height)
            handle = cuda.ipc_memory_handle(self._pool.memory)
        except cuda.CudaError as exc:
            log.warning("%s: cannot share frame memory with its decoding process: %s; reconnecting", self._shown, exc)
            return False
        return self._child.send({"pool": handle.hex()})

    def _close_flags(self) -> None:
        if self._flags_fd >= 0:
            self._flags.close()
            os.close(self._flags_fd)
            self._flags_fd = -1
