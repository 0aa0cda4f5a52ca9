"""Network streams demuxed in a child process, their compressed packets handed to the daemon over a pipe.

Why a process: PyNvVideoCodec's demuxer keeps the GIL while it waits for network data
(``scripts/probe-gil``: on an HTTP server that answered and then sent nothing, no other Python thread ran
again within 22 s). One stalled camera must never stall the others, so a network source decoded by NVDEC
is demuxed by ``python -m daemon.demux`` — one small process per camera, which may block as it likes —
and the daemon's reader only reads packets from a pipe (``select`` and ``os.read`` release the GIL) and
gives them to its decoder. The child dies with the daemon (``PR_SET_PDEATHSIG``).

The child demuxes with PyAV when it is installed (FFmpeg's own options: timeouts, RTSP transport), else
with PyNvVideoCodec's demuxer (what a GPU box has). It takes its settings as one JSON line on stdin, never
on its command line, where any local user could read a camera's password in ``ps``.

Wire format on the child's stdout: ``MAGIC``, a 4-byte length and a JSON header (codec, width, height,
fps, the codec's out-of-band parameter sets as hex in Annex B form), then per packet a 5-byte record
head (payload size, flags: bit 0 key frame) and the payload. A clean end of stream is the pipe closing
with exit status 0; an error is one line on stderr (the URL masked) and status 1, or 2 when a retry
cannot help (no video stream).
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from .childproc import EXIT_FINAL, EXIT_RETRYABLE, SourceChild, child_stdio
from .redact import mask_text, mask_url

__all__ = ["MAGIC", "NVDEC_CODECS", "Packet", "PacketStream", "StreamHeader", "annexb_packet", "annexb_parameter_sets", "main", "nal_length_size"]

MAGIC = b"TSDM"
_HEAD = struct.Struct("<IB")  # payload size, flags
_KEY = 1
_MAX_HEADER = 1 << 20
_MAX_PACKET = 64 << 20  # a packet larger than this is a broken stream, not a picture


@dataclass(frozen=True)
class StreamHeader:
    codec: str  # FFmpeg's codec name: h264, hevc, av1, vp9, mpeg2video, ...
    width: int
    height: int
    fps: float | None
    extradata: bytes  # the parameter sets carried out of band (RTSP's SDP), Annex B; b"" when in band


@dataclass(frozen=True)
class Packet:
    data: bytes
    key: bool


class PacketStream:
    """The daemon's side: starts the child for ``url``, reads its header within ``open_timeout_s`` and
    then one packet at a time, each within ``read_timeout_s`` (a camera that keeps its connection open
    but sends nothing is a stall: :class:`SourceError`, retryable). :meth:`read` returns None at a clean
    end of stream. Errors name the URL masked."""

    def __init__(self, url: str, *, open_timeout_s: float, read_timeout_s: float, rtsp_transport: str = "auto",
                 demuxer: str = "auto"):
        self._read_timeout_s = read_timeout_s
        settings = {"url": url, "open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s,
                    "rtsp_transport": rtsp_transport, "demuxer": demuxer}
        self._child = SourceChild("daemon.demux", mask_url(url), "demuxer")
        self._pipe = self._child.pipe
        try:
            self._child.send(settings, last=True)  # False when it died at once: the header failure below says why
            deadline = time.monotonic() + open_timeout_s + read_timeout_s  # the child's open, then its first read
            magic = self._pipe.take(len(MAGIC) + 4, deadline)
            if magic is None or magic[:4] != MAGIC:
                raise self._child.failure("the demuxer process sent no stream header")
            (length,) = struct.unpack("<I", magic[4:])
            body = self._pipe.take(length, deadline) if length <= _MAX_HEADER else None
            if body is None:
                raise self._child.failure("the demuxer process sent a broken stream header")
            try:
                fields = json.loads(body)
                self.header = StreamHeader(str(fields["codec"]), int(fields["width"]), int(fields["height"]),
                                           float(fields["fps"]) if fields.get("fps") else None, bytes.fromhex(fields.get("extradata", "")))
            except (ValueError, KeyError, TypeError):
                raise self._child.failure("the demuxer process sent a broken stream header") from None
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._child.process.pid

    @property
    def shown(self) -> str:
        """The URL as logs show it (masked)."""
        return self._child.shown

    def read(self) -> Packet | None:
        """The next packet; None at a clean end of stream; SourceError on a stall or the child's error."""
        deadline = time.monotonic() + self._read_timeout_s
        head = self._pipe.take(_HEAD.size, deadline)
        if head is None:
            if self._pipe.eof and not self._pipe.buffered and self._child.exit_status(5.0) == 0:
                return None
            raise self._child.failure(f"no packet within {self._read_timeout_s:g} s" if not self._pipe.eof else "the demuxer process ended")
        size, flags = _HEAD.unpack(head)
        if size > _MAX_PACKET:
            raise self._child.failure(f"a packet of {size} bytes")
        data = self._pipe.take(size, deadline)
        if data is None:
            raise self._child.failure(f"no packet within {self._read_timeout_s:g} s" if not self._pipe.eof else "the demuxer process ended mid-packet")
        return Packet(data, bool(flags & _KEY))

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and close the pipes; idempotent."""
        self._child.stop()


def nal_length_size(codec: str, extradata: bytes | None) -> int:
    """The size of the NAL length prefix when ``extradata`` is in avcC/hvcC form (packets from MP4, MKV,
    FLV), else 0 (packets already in Annex B: MPEG-TS, RTSP)."""
    if not extradata or extradata[0] != 1:
        return 0
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return 0


def annexb_packet(data: bytes, length_size: int) -> bytes:
    """A length-prefixed packet (``length_size`` bytes per NAL, big-endian) with start codes instead, as
    NVDEC's parser reads it; FFmpeg's h264_mp4toannexb does the same. A length past the end stops there."""
    out = bytearray()
    offset = 0
    while offset + length_size <= len(data):
        length = int.from_bytes(data[offset : offset + length_size], "big")
        offset += length_size
        out += b"\x00\x00\x00\x01" + data[offset : offset + length]
        offset += length
    return bytes(out)


def annexb_parameter_sets(codec: str, extradata: bytes | None) -> bytes:
    """The codec's out-of-band parameter sets as NVDEC reads them (Annex B, start codes). FFmpeg keeps
    H.264's in avcC form for some containers; RTSP's come from the SDP, Annex B already. HEVC's hvcC
    form is converted too. Empty when there are none (they travel in band, as in MPEG-TS)."""
    if not extradata:
        return b""
    if extradata[:3] == b"\x00\x00\x01" or extradata[:4] == b"\x00\x00\x00\x01":
        return bytes(extradata)
    out = bytearray()
    try:
        if codec == "h264" and extradata[0] == 1:  # avcC: SPS then PPS, each with a 2-byte length
            offset = 5
            for count_mask in (0x1F, 0xFF):
                count = extradata[offset] & count_mask
                offset = _copy_nal_units(extradata, offset + 1, count, out)
            return bytes(out)
        if codec == "hevc" and len(extradata) > 23 and extradata[0] == 1:  # hvcC: arrays of VPS, SPS, PPS, SEI
            offset, arrays = 23, extradata[22]
            for _ in range(arrays):
                count = int.from_bytes(extradata[offset + 1 : offset + 3], "big")
                offset = _copy_nal_units(extradata, offset + 3, count, out)
            return bytes(out)
    except IndexError:
        return b""
    return b""


def _copy_nal_units(record: bytes, offset: int, count: int, out: bytearray) -> int:
    """``count`` NAL units of a configuration record, each after its 2-byte length, appended to ``out``
    with start codes; returns the offset after them (IndexError past the record's end)."""
    for _ in range(count):
        if offset + 2 > len(record):
            raise IndexError(offset)
        length = int.from_bytes(record[offset : offset + 2], "big")
        out += b"\x00\x00\x00\x01" + record[offset + 2 : offset + 2 + length]
        offset += 2 + length
    return offset


# -- the child ---------------------------------------------------------------------------------------------
def _write_header(out: BinaryIO, header: StreamHeader) -> None:
    body = json.dumps({"codec": header.codec, "width": header.width, "height": header.height, "fps": header.fps,
                       "extradata": header.extradata.hex()}).encode()
    out.write(MAGIC + struct.pack("<I", len(body)) + body)
    out.flush()


def _write_packet(out: BinaryIO, data: bytes, key: bool) -> None:
    out.write(_HEAD.pack(len(data), _KEY if key else 0))
    out.write(data)
    out.flush()


class _Unavailable(Exception):
    """No demuxer library in this interpreter."""


def _demux_with_pyav(settings: dict[str, Any], out: BinaryIO) -> None:
    try:
        import av
    except ImportError:
        raise _Unavailable("PyAV") from None
    options = {} if settings["rtsp_transport"] == "auto" else {"rtsp_transport": settings["rtsp_transport"]}
    timeout = (settings["open_timeout_s"], settings["read_timeout_s"])
    with av.open(settings["url"], mode="r", timeout=timeout, options=options) as container:
        if not container.streams.video:
            raise LookupError("no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and 0 < float(rate) < 1000 else None
        _write_header(out, StreamHeader(context.name, int(context.width), int(context.height), fps,
                                        annexb_parameter_sets(context.name, context.extradata)))
        length_size = nal_length_size(context.name, context.extradata)  # RTMP, HTTP-FLV, fragmented MP4
        for packet in container.demux(stream):
            if packet.size:
                data = bytes(packet)
                _write_packet(out, annexb_packet(data, length_size) if length_size else data, bool(packet.is_keyframe))


# FFmpeg's codec names (the demuxer's header) -> PyNvVideoCodec's cudaVideoCodec member names
NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8", "mpeg2video": "MPEG2", "mpeg4": "MPEG4",
                 "mjpeg": "JPEG", "vc1": "VC1"}

_NVC_CODEC_NAMES = {"H264": "h264", "HEVC": "hevc", "AV1": "av1", "VP9": "vp9", "VP8": "vp8", "MPEG2": "mpeg2video",
                    "MPEG4": "mpeg4", "JPEG": "mjpeg", "VC1": "vc1"}


def _demux_with_pynvvideocodec(settings: dict[str, Any], out: BinaryIO) -> None:
    try:
        import PyNvVideoCodec as nvc
    except Exception:
        raise _Unavailable("PyNvVideoCodec") from None
    demuxer = nvc.CreateDemuxer(filename=settings["url"])
    codec = demuxer.GetNvCodecId()
    codec_id = str(getattr(codec, "name", codec)).rsplit(".", 1)[-1]
    width, height, fps = _nvc_geometry(demuxer)
    _write_header(out, StreamHeader(_NVC_CODEC_NAMES.get(codec_id, codec_id.lower()), width, height, fps, b""))
    for packet in demuxer:
        if packet.bsl:
            _write_packet(out, ctypes.string_at(packet.bsl_data, packet.bsl), bool(getattr(packet, "key", 0)))


def _nvc_geometry(demuxer: Any) -> tuple[int, int, float | None]:
    """Width, height and rate as PyNvVideoCodec's demuxer tells them: its stream metadata, else the
    accessors of its C++ demuxer (which of them a release has was not checked on a GPU). 0 and None where
    neither answers: the decoder's first frame gives the size, and cameras are not paced."""
    width = height = 0
    fps = None
    try:
        metadata = demuxer.get_stream_metadata()
        width, height = int(getattr(metadata, "width", 0) or 0), int(getattr(metadata, "height", 0) or 0)
        fps = float(getattr(metadata, "average_fps", 0) or 0) or None
    except Exception:
        for name in ("Width", "Height", "FrameRate"):
            try:
                value = getattr(demuxer, name)()
            except Exception:
                continue
            if name == "Width":
                width = int(value)
            elif name == "Height":
                height = int(value)
            else:
                fps = float(value) or None
    return width, height, fps


def main() -> int:
    """``python -m daemon.demux``: settings as one JSON line on stdin; packets on stdout (module docstring)."""
    out = child_stdio()
    settings = json.loads(sys.stdin.readline())
    order = {"auto": (_demux_with_pyav, _demux_with_pynvvideocodec), "pyav": (_demux_with_pyav,),
             "pynvvideocodec": (_demux_with_pynvvideocodec,)}[settings.get("demuxer", "auto")]
    missing = []
    for demux in order:
        try:
            demux(settings, out)
            return 0
        except _Unavailable as exc:
            missing.append(str(exc))
        except BrokenPipeError:  # the daemon closed the stream: nothing to say
            return 0
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FINAL
        except Exception as exc:  # FFmpeg's and PyNvVideoCodec's errors: the camera may come back
            print(f"cannot demux: {mask_text(str(exc)) or type(exc).__name__}", file=sys.stderr)
            return EXIT_RETRYABLE
    print(f"no demuxer: needs {' or '.join(missing)}", file=sys.stderr)
    return EXIT_FINAL


if __name__ == "__main__":
    sys.exit(main())
