"""The child of :mod:`daemon.gpu.nvdecproc` (``python -m daemon.gpu.nvdecchild``): a decoding process that
serves up to ``CAMERAS_PER_PROCESS`` cameras, each on a thread of its own, demuxed, decoded by NVDEC and
copied into the daemon's GPU memory; that module's docstring says why and how, and
:mod:`daemon.decodechild` holds the wire format and the camera loop every decoding process shares. It
imports only what it needs (no OpenCV, no configuration models).
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import numpy as np

from .. import cuda
from ..childproc import child_stdio
from ..decodechild import (CAMERAS_PER_PROCESS, END, ERROR, EXIT_FINAL, EXIT_RETRYABLE, FRAME, MAGIC, MAX_HEADER, RECORD, SIZE, CameraFailure,
                           SlotHandover, serve_camera, serve_cameras)
from ..demux import NVDEC_CODECS, PacketStream
from ..errors import SourceError
from ..redact import mask_text, mask_url
from .nv12 import Nv12Planes

__all__ = ["CAMERAS_PER_PROCESS", "END", "ERROR", "EXIT_FINAL", "EXIT_RETRYABLE", "FRAME", "MAGIC", "MAX_HEADER", "RECORD", "SIZE", "main"]

class _Handover(SlotHandover):
    """One camera's side: its slots in the daemon's GPU memory (opened through CUDA IPC) and the stream
    its copies go on."""

    def __init__(self, settings: dict[str, Any], records: int, commands: int, flags_fd: int):
        super().__init__(settings, records, commands, flags_fd)
        self._stream = cuda.Stream(hold_gil=True)
        self._copied = cuda.Event()  # blocking sync: waiting for a copy sleeps; a stream synchronize would spin a core
        self._memory: cuda.ImportedDeviceMemory | None = None

    @property
    def stream(self) -> cuda.Stream:
        return self._stream

    def frame(self, frame: Any) -> None:
        """One decoded frame (PyNvVideoCodec's, NV12 planes) into a free slot of the daemon's pool."""
        planes = Nv12Planes.of(frame)
        width, height = planes.width, planes.height
        if self._memory is None:
            self._open_pool(width, height)
        elif (width, height) != self._size:
            raise CameraFailure(f"the stream changed its frame size from {self._size[0]}x{self._size[1]} to {width}x{height}", EXIT_RETRYABLE)
        slot = self.free_slot()
        planes.copy_to(self._memory.ptr + slot * planes.nbytes, lambda *args: cuda.memcpy2d_dtod_async(*args, self._stream))
        self._copied.record(self._stream)
        self._copied.synchronize()  # complete before it is announced: no event has to cross processes
        self.announce(slot, width, height)

    def close(self) -> None:
        """Let go of the daemon's memory (all copies are done: each was awaited), then the pipes."""
        if self._memory is not None:
            self._memory.close()
        self._copied.close()
        self._stream.close()
        super().close()

    def _open_pool(self, width: int, height: int) -> None:
        message = self.ask_for_pool(width, height)
        try:
            self._memory = cuda.ImportedDeviceMemory(bytes.fromhex(message["pool"]))
        except (TypeError, ValueError) as exc:
            raise CameraFailure(f"the daemon sent no frame pool ({exc})", EXIT_RETRYABLE) from None
        except cuda.CudaError as exc:  # Jetson: no CUDA IPC
            raise CameraFailure(f"cannot open the daemon's frame memory: {exc} (decode_process needs CUDA IPC: "
                                "discrete GPUs on Linux; set sources[].decode_process = false)", EXIT_FINAL) from None


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
        raise CameraFailure(f"NVDEC cannot decode it: {exc}", EXIT_RETRYABLE) from None
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
        raise CameraFailure(reason(exc), EXIT_RETRYABLE if exc.retryable else EXIT_FINAL) from None
    try:
        header = packets.header
        codec = getattr(nvc.cudaVideoCodec, NVDEC_CODECS.get(header.codec, ""), None)
        if codec is None:
            raise CameraFailure(f"NVDEC does not decode {header.codec!r} streams (use decoder = 'opencv')", EXIT_FINAL)
        try:
            decoder = nvc.CreateDecoder(gpuid=gpu, codec=codec, cudacontext=cuda.primary_context_handle(gpu),
                                        cudastream=handover.stream.handle, usedevicememory=True)
        except Exception as exc:
            raise CameraFailure(f"NVDEC cannot decode this {header.codec} stream: {exc}", EXIT_RETRYABLE) from None
        handover.header(header.fps, header.width, header.height)
        prefix = header.extradata  # out-of-band parameter sets, in front of the first packet
        while True:
            try:
                packet = packets.read()
            except SourceError as exc:
                raise CameraFailure(reason(exc), EXIT_RETRYABLE) from None
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
                raise CameraFailure(f"NVDEC decoding failed: {mask_text(str(exc)) or type(exc).__name__}", EXIT_RETRYABLE) from None
            for frame in frames:
                handover.frame(frame)
    finally:
        packets.close()


def _handover_of(settings: dict[str, Any], records: int, commands: int, flags_fd: int) -> _Handover:
    try:
        cuda.primary_context_handle(int(settings["gpu"]))  # current on this thread: the enqueues go through libcuda
    except cuda.CudaError as exc:  # before the handover: the descriptors are still plain, and the error goes out on them
        raise CameraFailure(f"CUDA: {exc}", EXIT_RETRYABLE) from None
    return _Handover(settings, records, commands, flags_fd)


def _decode(nvc: Any, settings: dict[str, Any], handover: _Handover) -> None:
    try:
        if settings["stream"]:
            _decode_stream(nvc, settings, handover)
            handover.stream_ended()
        else:
            _decode_file(nvc, settings, handover)
    except cuda.CudaError as exc:
        raise CameraFailure(f"CUDA: {exc}", EXIT_RETRYABLE) from None


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
    return serve_cameras(control, lambda camera, fds: serve_camera(camera, fds, _handover_of, lambda c, h: _decode(nvc, c, h)))


if __name__ == "__main__":
    sys.exit(main())
