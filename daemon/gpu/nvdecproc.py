"""NVDEC decoding in processes beside the daemon (``sources[].decode_process = true``): a camera's demuxing,
decoding and frame copies run in a decoding process, and the daemon's reader only takes a 16-byte record
per frame.

Why: every reader thread of the daemon shares one GIL with the batcher, the completer and the
publisher. With 96 NVDEC cameras on the H200 the readers used 1.0-1.4 cores under that GIL (their
decode calls, frame copies, event records and packet reads), and they were the limit once tracking had
moved out (docs/benchmarks.md). A decoding process has a GIL of its own. It serves up to
:data:`daemon.gpu.nvdecchild.CAMERAS_PER_PROCESS` cameras, one thread each, in one CUDA context: one
process per camera failed past about 76 contexts on the H200.

How: the daemon allocates a camera's frame pool (``slots`` NV12 frames in one ``cudaMalloc``) when the
child reports the first frame's size, and gives the child its IPC handle (:func:`daemon.cuda.ipc_memory_handle`).
The memory stays the daemon's: a child that dies cannot free a frame a batch is still reading, and the
daemon frees it only after the child let go of it (the camera's record pipe closed). The child decodes
into PyNvVideoCodec's surfaces, copies each frame into a free slot, waits for that copy (so a frame is
complete when its record arrives and needs no event across processes) and writes ``(kind, slot, index)``.
Which slots are free is a byte per slot in shared memory (a ``memfd``): the child sets it when it fills
the slot, the daemon clears it when the frame's batch has completed or the queue dropped it — a byte
written under the GIL, no system call, nothing for the completer to wait for. A full pool is
backpressure: the child waits for a slot.

Files are decoded with ``SimpleDecoder`` as :class:`daemon.gpu.nvdec.NvdecProducer` does, and at their
end the child waits for ``rewind``; network streams are demuxed by a process of their own
(:class:`daemon.demux.PacketStream`, started by the decoding process) and decoded with ``CreateDecoder``.
A stall (no frame within the read timeout) or the camera's error reads as "no frame": the reader
reconnects with its backoff, as for the other producers, and the error (URL masked) is logged.

Wire format, per camera, child to daemon (its record pipe): ``MAGIC``, a 4-byte length and a JSON header
(fps, frame count, width and height when known), then 16-byte records ``<BxHIII``: kind, slot, frame
index, width, height. Kinds: ``SIZE`` (the first frame's size: the child then waits for the pool),
``FRAME``, ``END`` (a file's end), ``ERROR`` (status in the slot field, the text's length in the index
field, the text after it). Daemon to child (its command pipe): JSON lines ``{"pool": hex}``,
``{"rewind": true}``; closing it ends the camera.
"""

from __future__ import annotations

import logging
import mmap
import threading

from .. import cuda
from ..decodeproc import ProcessProducer, hosts
from ..entities import DeviceFrame

__all__ = ["NvdecProcessProducer", "ProcessImage", "hosts"]

log = logging.getLogger("trtstream.capture")


class _SlotPool:
    """The daemon's side of one camera's frames: the device memory, the free/busy byte per slot, and how
    many frames are still out (queued or in a batch). Closing is two steps: :meth:`detach` when the
    camera closes (no byte is written after it: its shared memory goes), :meth:`let_go` once the decoding
    thread no longer writes into the memory. The memory is freed after both and the last frame's return,
    never under a batch that reads it."""

    def __init__(self, flags: mmap.mmap, slots: int, width: int, height: int):
        self.width, self.height = width, height
        self.slot_bytes = width * height * 3 // 2
        self.memory = cuda.DeviceBuffer(self.slot_bytes * slots)
        self._flags = flags
        self._lock = threading.Lock()
        self._out = 0
        self._detached = False
        self._let_go = False

    def image(self, slot: int) -> "ProcessImage":
        with self._lock:
            self._out += 1
        return ProcessImage(self, slot)

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._out -= 1
            if not self._detached:
                self._flags[slot] = 0  # the child may fill it again
            free_now = self._detached and self._let_go and self._out == 0
        if free_now:
            self.memory.close()

    def detach(self) -> None:
        with self._lock:
            self._detached = True

    def let_go(self) -> None:
        with self._lock:
            self._detached = self._let_go = True
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


class NvdecProcessProducer(ProcessProducer):
    """A file or network stream decoded by NVDEC in a decoding process: its frames NV12 in the daemon's GPU
    memory (module docstring)."""

    CHILD = "daemon.gpu.nvdecchild"
    CHILD_WHAT = "its NVDEC decoding process"

    def __init__(self, uri: str, *, stream: bool, slots: int, open_timeout_s: float, read_timeout_s: float,
                 rtsp_transport: str = "auto", gpu: int = 0, stop: threading.Event | None = None):
        super().__init__(uri, stream=stream, slots=slots, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                         settings={"rtsp_transport": rtsp_transport}, gpu=gpu, stop=stop)

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
        if not self._command({"pool": handle.hex()}):
            log.warning("%s", self._failure("its decoding thread went away before it took its frame memory"))
            return False
        return True

