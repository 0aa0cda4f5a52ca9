"""The child of :mod:`daemon.gpu.nvdecproc` (``python -m daemon.gpu.nvdecchild``): one camera demuxed,
decoded by NVDEC and copied into the daemon's frame memory; that module's docstring says why and how,
and this one holds the wire format both sides speak. It imports only what it needs (no OpenCV, no
configuration models): there is one per camera.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
import time
from typing import Any, BinaryIO

import numpy as np

from .. import cuda
from ..childproc import EXIT_FINAL, child_stdio
from ..demux import NVDEC_CODECS, SinkStopped, StreamHeader, run_demuxer
from ..redact import mask_text

__all__ = ["END", "EXIT_FINAL", "EXIT_RETRYABLE", "FRAME", "MAGIC", "MAX_HEADER", "RECORD", "SIZE", "main"]

MAGIC = b"TSNV"
RECORD = struct.Struct("<BxHIII")  # kind, slot, index, width, height
SIZE, FRAME, END = 1, 2, 3
EXIT_RETRYABLE = 1
MAX_HEADER = 1 << 16
SLOT_POLL_MAX_S = 0.01


# -- the child ---------------------------------------------------------------------------------------------
class _Failure(SinkStopped):
    """The child's error: its line (printed masked) and exit status. A :class:`SinkStopped`, so that the
    demuxer ends with this line and not its own "cannot demux"."""


class _Stopped(SinkStopped):
    """The daemon closed the command pipe: end quietly."""

    def __init__(self) -> None:
        super().__init__("", 0)


class _Handover:
    """The child's side: the slots it may fill (the shared bytes), the daemon's memory it fills, and the
    records it writes. One thread: the child's main thread."""

    def __init__(self, settings: dict[str, Any], out: BinaryIO, commands: BinaryIO):
        self._out = out
        self._commands = commands
        self._slots = int(settings["slots"])
        self._flags = mmap.mmap(int(settings["flags_fd"]), self._slots)
        self._stream = cuda.Stream(hold_gil=True)
        self._copied = cuda.Event()  # blocking sync: waiting for a copy sleeps; a stream synchronize would spin a core
        self._memory: cuda.ImportedDeviceMemory | None = None
        self._size = (0, 0)
        self._index = 0

    @property
    def stream(self) -> cuda.Stream:
        return self._stream

    def header(self, fps: float | None, width: int, height: int, frames: int = 0) -> None:
        body = json.dumps({"fps": fps, "width": width, "height": height, "frames": frames}).encode()
        self._out.write(MAGIC + struct.pack("<I", len(body)) + body)
        self._out.flush()

    def frame(self, frame: Any) -> None:
        """One decoded frame (PyNvVideoCodec's, NV12 planes) into a free slot of the daemon's pool."""
        planes = [plane.__cuda_array_interface__ for plane in frame.cuda()]
        height, width = int(planes[0]["shape"][0]), int(planes[0]["shape"][1])
        if self._memory is None:
            self._open_pool(width, height)
        elif (width, height) != self._size:
            raise _Failure(f"the stream changed its frame size from {self._size[0]}x{self._size[1]} to {width}x{height}", EXIT_RETRYABLE)
        slot = self._free_slot()
        dst = self._memory.ptr + slot * (width * height * 3 // 2)
        y_ptr, uv_ptr = int(planes[0]["data"][0]), int(planes[1]["data"][0])
        y_pitch = planes[0]["strides"][0] if planes[0].get("strides") else width
        uv_pitch = planes[1]["strides"][0] if planes[1].get("strides") else width
        if uv_pitch == y_pitch and uv_ptr == y_ptr + y_pitch * height:  # one allocation, chroma after luma
            cuda.memcpy2d_dtod_async(dst, width, y_ptr, y_pitch, width, height + height // 2, self._stream)
        else:
            cuda.memcpy2d_dtod_async(dst, width, y_ptr, y_pitch, width, height, self._stream)
            cuda.memcpy2d_dtod_async(dst + width * height, width, uv_ptr, uv_pitch, width, height // 2, self._stream)
        self._copied.record(self._stream)
        self._copied.synchronize()  # complete before it is announced: no event has to cross processes
        self._flags[slot] = 1
        self._out.write(RECORD.pack(FRAME, slot, self._index, width, height))
        self._out.flush()
        self._index += 1

    def end(self) -> bool:
        """A file's end: say so, then wait for the daemon. True: rewind; False: it closed the pipe."""
        self._out.write(RECORD.pack(END, 0, self._index, *self._size))
        self._out.flush()
        try:
            message = self._next_command()
        except _Stopped:
            return False
        if message.get("rewind"):
            self._index = 0
            return True
        return False

    def _open_pool(self, width: int, height: int) -> None:
        self._out.write(RECORD.pack(SIZE, 0, 0, width, height))
        self._out.flush()
        message = self._next_command()
        try:
            self._memory = cuda.ImportedDeviceMemory(bytes.fromhex(message["pool"]))
        except (KeyError, ValueError) as exc:
            raise _Failure(f"the daemon sent no frame pool ({exc})", EXIT_RETRYABLE) from None
        except cuda.CudaError as exc:  # Jetson: no CUDA IPC
            raise _Failure(f"cannot open the daemon's frame memory: {exc} (decode_process needs CUDA IPC: "
                           "discrete GPUs on Linux; set sources[].decode_process = false)", EXIT_FINAL) from None
        self._size = (width, height)

    def _free_slot(self) -> int:
        """A slot the daemon gave back; waits (polling the shared bytes) while all are out. A file runs
        ahead of its paced reader until the pool is full and then waits here most of the time, so the
        poll slows down to ``SLOT_POLL_MAX_S``: 2000 polls a second in each of 80 processes cost 8 cores
        on the H200. A camera's frames arrive at its rate and rarely find the pool full."""
        pause = 0.0005
        while True:
            slot = self._flags.find(b"\x00")
            if 0 <= slot < self._slots:
                return slot
            time.sleep(pause)
            pause = min(pause * 2, SLOT_POLL_MAX_S)

    def _next_command(self) -> dict[str, Any]:
        line = self._commands.readline()
        if not line:
            raise _Stopped()
        return json.loads(line)


def _decode_file(nvc: Any, settings: dict[str, Any], handover: _Handover) -> None:
    gpu = int(settings["gpu"])
    try:
        decoder = nvc.SimpleDecoder(
            settings["url"], gpu_id=gpu, cuda_context=cuda.primary_context_handle(gpu), cuda_stream=handover.stream.handle,
            use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE,
        )  # fmt: skip
        metadata = decoder.get_stream_metadata()
    except Exception as exc:
        # retryable, unlike in the daemon (daemon/gpu/nvdec.py): here it is also how a machine short of
        # decoder or context resources answers, which a later attempt may find free
        raise _Failure(f"NVDEC cannot decode {settings['url']}: {exc}", EXIT_RETRYABLE) from None
    fps = float(getattr(metadata, "average_fps", 0) or 0) or None
    frames = int(getattr(metadata, "num_frames", 0) or 0)  # asking past the end prints "INVALID INDEX" (nvdec.py)
    handover.header(fps, int(getattr(metadata, "width", 0) or 0), int(getattr(metadata, "height", 0) or 0), frames)
    index = 0
    while True:
        batch = decoder.get_batch_frames(1) if not frames or index < frames else []
        if batch:
            handover.frame(batch[0])
            index += 1
            continue
        if not handover.end():
            return
        decoder.seek_to_index(0)
        index = 0


class _DecodingSink:
    """The network demuxer's packets (:func:`daemon.demux.run_demuxer`) decoded here by NVDEC."""

    def __init__(self, nvc: Any, settings: dict[str, Any], handover: _Handover):
        self._nvc = nvc
        self._gpu = int(settings["gpu"])
        self._handover = handover
        self._decoder: Any = None
        self._prefix = b""

    def header(self, header: StreamHeader) -> None:
        codec = getattr(self._nvc.cudaVideoCodec, NVDEC_CODECS.get(header.codec, ""), None)
        if codec is None:
            raise _Failure(f"NVDEC does not decode {header.codec!r} streams (use decoder = 'opencv')", EXIT_FINAL)
        try:
            self._decoder = self._nvc.CreateDecoder(gpuid=self._gpu, codec=codec, cudacontext=cuda.primary_context_handle(self._gpu),
                                                    cudastream=self._handover.stream.handle, usedevicememory=True)
        except Exception as exc:
            raise _Failure(f"NVDEC cannot decode this {header.codec} stream: {exc}", EXIT_FINAL) from None
        self._prefix = header.extradata
        self._handover.header(header.fps, header.width, header.height)

    def packet(self, data: bytes, key: bool) -> None:
        payload = np.frombuffer(self._prefix + data if self._prefix else data, np.uint8)
        self._prefix = b""
        packet = self._nvc.PacketData()
        packet.bsl_data = payload.ctypes.data
        packet.bsl = payload.size
        try:
            frames = list(self._decoder.Decode(packet))
        except Exception as exc:
            raise _Failure(f"NVDEC decoding failed: {mask_text(str(exc)) or type(exc).__name__}", EXIT_RETRYABLE) from None
        for frame in frames:
            self._handover.frame(frame)


def main() -> int:
    """``python -m daemon.gpu.nvdecchild``: settings as one JSON line on stdin (module docstring)."""
    out = child_stdio()
    commands = sys.stdin.buffer
    settings = json.loads(commands.readline())
    try:
        import PyNvVideoCodec as nvc
    except Exception as exc:
        print(f"NVDEC needs PyNvVideoCodec and the NVIDIA driver: {exc}", file=sys.stderr)
        return EXIT_FINAL
    try:
        handover = _Handover(settings, out, commands)
        if not settings["stream"]:
            _decode_file(nvc, settings, handover)
            return 0
        return run_demuxer({**settings, "demuxer": settings.get("demuxer", "auto")}, _DecodingSink(nvc, settings, handover))
    except _Stopped:
        return 0
    except _Failure as exc:
        print(mask_text(str(exc)), file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # the daemon closed the stream
        return 0
    except cuda.CudaError as exc:
        print(f"CUDA: {exc}", file=sys.stderr)
        return EXIT_RETRYABLE


if __name__ == "__main__":
    sys.exit(main())
