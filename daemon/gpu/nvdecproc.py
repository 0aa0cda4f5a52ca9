"""NVDEC decoding in processes beside the daemon (``sources[].decode_process = true`` with NVDEC): a camera's
demuxing, decoding and frame copies run in a decoding process (:mod:`daemon.gpu.nvdecchild`), and the
daemon's reader only takes a 16-byte record per frame. :mod:`daemon.decodeproc` says why and holds the
handover every decoding process shares; :mod:`daemon.decodechild` the wire format.

Here: the frame pool is ``slots`` NV12 frames in one ``cudaMalloc`` of the daemon's, made when the child
reports the first frame's size; the child gets its IPC handle (:func:`daemon.cuda.ipc_memory_handle`,
``{"pool": hex}``), copies each decoded frame into a free slot and waits for that copy, so a frame is
complete when its record arrives and needs no event across processes. The memory stays the daemon's: a
child that dies cannot free a frame a batch is still reading. Each process is one CUDA context and serves
up to 8 cameras: one process per camera failed past about 76 contexts on the H200. Files are decoded
with ``SimpleDecoder`` as :class:`daemon.gpu.nvdec.NvdecProducer` does, and at their end the child waits
for ``rewind``; network streams are demuxed by a process of their own (:class:`daemon.demux.PacketStream`,
started by the decoding process) and decoded with ``CreateDecoder``.
"""

from __future__ import annotations

import logging
import mmap
import threading

from .. import cuda
from ..decodeproc import ProcessProducer, SlotAccounts, hosts
from ..entities import DeviceFrame

__all__ = ["NvdecProcessProducer", "ProcessImage", "hosts"]

log = logging.getLogger("trtstream.capture")


class _SlotPool(SlotAccounts):
    """The daemon's side of one camera's NV12 frames: its device memory (and the slot bookkeeping of
    :class:`daemon.decodeproc.SlotAccounts`), freed after the camera closed, its decoding thread let go and
    the last frame came back."""

    def __init__(self, flags: mmap.mmap, slots: int, width: int, height: int):
        super().__init__(flags)
        self.width, self.height = width, height
        self.slot_bytes = width * height * 3 // 2
        self.memory = cuda.DeviceBuffer(self.slot_bytes * slots)

    def image(self, slot: int) -> "ProcessImage":
        self._taken()
        return ProcessImage(self, slot)

    def give_back(self, slot: int) -> None:
        self._returned(slot)

    def _free(self) -> None:
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

