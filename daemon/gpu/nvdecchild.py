"""The child of :mod:`daemon.gpu.nvdecproc` (``python -m daemon.gpu.nvdecchild``): a decoding process that
serves up to ``CAMERAS_PER_PROCESS`` cameras, each on a thread of its own, demuxed, decoded by NVDEC and
copied into the daemon's frame memory; that module's docstring says why and how, and this one holds the
wire format both sides speak. It imports only what it needs (no OpenCV, no configuration models).

The daemon hands it a camera over its control socket (``AF_UNIX``, ``SCM_RIGHTS``): the camera's settings
as JSON and three descriptors, the write end of the camera's record pipe, the read end of its command
pipe, and its slot bytes (a ``memfd``). A camera ends when the daemon closes its command pipe (or at its
own error, sent as an ``ERROR`` record); the thread then lets go of the daemon's memory and closes the
record pipe, which tells the daemon that the memory may be freed. The process ends when the control
socket closes, or with the daemon (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

import numpy as np

from .. import cuda
from ..childproc import EXIT_FINAL, EXIT_RETRYABLE, child_stdio
from ..demux import NVDEC_CODECS, PacketStream
from ..errors import SourceError
from ..redact import mask_text, mask_url
from .nv12 import Nv12Planes

__all__ = ["CAMERAS_PER_PROCESS", "END", "ERROR", "EXIT_FINAL", "EXIT_RETRYABLE", "FRAME", "MAGIC", "MAX_HEADER", "RECORD", "SIZE", "main"]

CAMERAS_PER_PROCESS = 8
"""Cameras one decoding process serves. Each process is a CUDA context, and a GPU has only so many: on the
H200, one process per camera failed past about 76 of them (docs/benchmarks.md). Eight share one GIL for
their decode calls and copies, about 240 frames a second at 1080p30."""

MAGIC = b"TSNV"
RECORD = struct.Struct("<BxHIII")  # kind, slot, index, width, height
SIZE, FRAME, END, ERROR = 1, 2, 3, 4  # ERROR: slot = exit status (1 retry may help, 2 not), index = length of the text after it
MAX_HEADER = 1 << 16
SLOT_POLL_MAX_S = 0.01


class _Failure(Exception):
    """A camera's error: its line (sent masked) and whether a retry may help (its status)."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.status = status


class _Stopped(Exception):
    """The daemon closed the camera's command pipe: end quietly."""


class _Handover:
    """One camera's side in this process: the slots it may fill (the shared bytes), the daemon's memory it
    fills, the records it writes and the commands it reads. One thread: the camera's."""

    def __init__(self, settings: dict[str, Any], out: BinaryIO, commands: BinaryIO, flags_fd: int):
        self._out = out
        self._commands = commands
        self._hang_up = select.poll()  # the daemon closed the command pipe: the camera is gone
        self._hang_up.register(commands.fileno(), select.POLLIN | select.POLLHUP)
        self._slots = int(settings["slots"])
        self._flags = mmap.mmap(flags_fd, self._slots)
        os.close(flags_fd)
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
        planes = Nv12Planes.of(frame)
        width, height = planes.width, planes.height
        if self._memory is None:
            self._open_pool(width, height)
        elif (width, height) != self._size:
            raise _Failure(f"the stream changed its frame size from {self._size[0]}x{self._size[1]} to {width}x{height}", EXIT_RETRYABLE)
        slot = self._free_slot()
        planes.copy_to(self._memory.ptr + slot * planes.nbytes, lambda *args: cuda.memcpy2d_dtod_async(*args, self._stream))
        self._copied.record(self._stream)
        self._copied.synchronize()  # complete before it is announced: no event has to cross processes
        self._flags[slot] = 1
        self._out.write(RECORD.pack(FRAME, slot, self._index, width, height))
        self._out.flush()
        self._index += 1

    def error(self, line: str, status: int) -> None:
        text = mask_text(line).encode()[:4000]
        self._out.write(RECORD.pack(ERROR, status, len(text), 0, 0) + text)
        self._out.flush()

    def stream_ended(self) -> None:
        """A network camera ended its stream (its demuxer's clean end)."""
        self._out.write(RECORD.pack(END, 0, self._index, *self._size))
        self._out.flush()

    def close(self) -> None:
        """Let go of the daemon's memory (all copies are done: each was awaited), then the pipes: the
        record pipe's end tells the daemon it may free that memory."""
        if self._memory is not None:
            self._memory.close()
        self._copied.close()
        self._stream.close()
        self._flags.close()
        for pipe in (self._out, self._commands):
            try:
                pipe.close()
            except OSError:
                pass

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
            if self._hang_up.poll(0):  # a command now is a hang-up or a protocol error: either way, stop
                raise _Stopped()
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
        raise _Failure(f"NVDEC cannot decode it: {exc}", EXIT_RETRYABLE) from None
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


def _decode_stream(nvc: Any, settings: dict[str, Any], handover: _Handover) -> None:
    """A network camera: demuxed by a process of its own (:class:`daemon.demux.PacketStream`: PyNvVideoCodec's
    demuxer keeps the GIL while it waits for the network, which would stall this process's other cameras),
    decoded here."""
    gpu = int(settings["gpu"])
    own_name = f"{mask_url(settings['url'])}: "  # the demuxer's errors name the camera; the daemon names it again

    def reason(exc: SourceError) -> str:
        return str(exc).removeprefix(own_name)

    try:
        packets = PacketStream(settings["url"], open_timeout_s=settings["open_timeout_s"], read_timeout_s=settings["read_timeout_s"],
                               rtsp_transport=settings["rtsp_transport"])
    except SourceError as exc:
        raise _Failure(reason(exc), EXIT_RETRYABLE if exc.retryable else EXIT_FINAL) from None
    try:
        header = packets.header
        codec = getattr(nvc.cudaVideoCodec, NVDEC_CODECS.get(header.codec, ""), None)
        if codec is None:
            raise _Failure(f"NVDEC does not decode {header.codec!r} streams (use decoder = 'opencv')", EXIT_FINAL)
        try:
            decoder = nvc.CreateDecoder(gpuid=gpu, codec=codec, cudacontext=cuda.primary_context_handle(gpu),
                                        cudastream=handover.stream.handle, usedevicememory=True)
        except Exception as exc:
            raise _Failure(f"NVDEC cannot decode this {header.codec} stream: {exc}", EXIT_RETRYABLE) from None
        handover.header(header.fps, header.width, header.height)
        prefix = header.extradata  # out-of-band parameter sets, in front of the first packet
        while True:
            try:
                packet = packets.read()
            except SourceError as exc:
                raise _Failure(reason(exc), EXIT_RETRYABLE) from None
            if packet is None:
                return
            payload = np.frombuffer(prefix + packet.data if prefix else packet.data, np.uint8)  # alive until Decode returns
            prefix = b""
            data = nvc.PacketData()
            data.bsl_data = payload.ctypes.data
            data.bsl = payload.size
            try:
                frames = list(decoder.Decode(data))
            except Exception as exc:
                raise _Failure(f"NVDEC decoding failed: {mask_text(str(exc)) or type(exc).__name__}", EXIT_RETRYABLE) from None
            for frame in frames:
                handover.frame(frame)
    finally:
        packets.close()


def _serve_camera(nvc: Any, settings: dict[str, Any], fds: list[int]) -> None:
    """One camera, start to end, on its own thread. Every end but the daemon's own hang-up is sent as a
    record (``END`` for a stream the camera ended, ``ERROR`` with the reason), so that no camera stops
    without its reader being told why."""
    records, commands, flags_fd = fds
    handover = None
    try:
        cuda.primary_context_handle(int(settings["gpu"]))  # current on this thread: the enqueues go through libcuda
        handover = _Handover(settings, os.fdopen(records, "wb"), os.fdopen(commands, "rb"), flags_fd)
        if settings["stream"]:
            _decode_stream(nvc, settings, handover)
            handover.stream_ended()
        else:
            _decode_file(nvc, settings, handover)
    except (_Stopped, BrokenPipeError):  # the daemon let the camera go: it closed the camera's pipes
        pass
    except _Failure as exc:
        _report(handover, records, str(exc), exc.status)
    except cuda.CudaError as exc:
        _report(handover, records, f"CUDA: {exc}", EXIT_RETRYABLE)
    except Exception as exc:  # PyNvVideoCodec's errors outside the calls above: this camera ends, the others go on
        _report(handover, records, f"{type(exc).__name__}: {exc}", EXIT_RETRYABLE)
    finally:
        if handover is not None:
            handover.close()
        else:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _report(handover: "_Handover | None", records: int, line: str, status: int) -> None:
    """A camera's error to its reader: through its handover, or straight onto its record pipe when it
    failed before it had one."""
    try:
        if handover is not None:
            handover.error(line, status)
        else:
            text = mask_text(line).encode()[:4000]
            os.write(records, RECORD.pack(ERROR, status, len(text), 0, 0) + text)
    except OSError:  # the daemon closed the camera meanwhile
        pass


def main() -> int:
    """``python -m daemon.gpu.nvdecchild``: its settings as one JSON line on stdin (the control socket's
    descriptor, the GPU), then cameras over that socket until it closes (module docstring)."""
    child_stdio()
    settings = json.loads(sys.stdin.readline())
    control = socket.socket(fileno=int(settings["control_fd"]))
    try:
        import PyNvVideoCodec as nvc
    except Exception as exc:
        print(f"NVDEC needs PyNvVideoCodec and the NVIDIA driver: {exc}", file=sys.stderr)
        return EXIT_FINAL
    try:
        cuda.primary_context_handle(int(settings["gpu"]))  # the one CUDA context every camera here shares
    except cuda.CudaError as exc:
        print(f"CUDA: {exc}", file=sys.stderr)
        return EXIT_RETRYABLE
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except OSError:
            return 0
        if not message:
            return 0  # the daemon closed the control socket
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        threading.Thread(target=_serve_camera, args=(nvc, json.loads(message), fds), name="camera", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
