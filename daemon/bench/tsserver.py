"""A network camera for benchmarks and tests: an MPEG-TS clip served over HTTP, looping, paced at the clip's
own rate (issue 13, item 8: the GPU machine has no RTSP server, and FFmpeg — OpenCV's and PyNvVideoCodec's
demuxer — reads MPEG-TS over HTTP as it reads a camera's stream).

Run it as a process of its own (``python -m daemon.bench.tsserver CLIP.ts``), never as a thread of the
process that reads it: PyNvVideoCodec's demuxer keeps the GIL while it waits for network data
(``scripts/probe-gil``), so a server thread beside it would never get to send.

Each GET of ``/<file name>`` streams the clip from its start, again and again, until the client goes away,
each frame when it is due, as a camera sends it: the transport packets from one video PES start to the next
go out together at that frame's decode time (its DTS, else PTS) after the stream's start. An earlier version
sent the bytes at the clip's average byte rate, which delivers a key frame late and the small frames after it
in a burst: a live source's short queue then drops frames a real camera would not have bunched up. It prints
``ready <port>`` once it listens.

Usage: python -m daemon.bench.tsserver CLIP.ts [--port 0] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PACKET = 188
CLOCK = 90_000  # MPEG-TS timestamps count 90 kHz ticks


class NotAVideoTransportStream(ValueError):
    """The file is not MPEG-TS, or has no video PES with a timestamp."""


def _timestamp(field: bytes) -> int:
    """A PES header's 33-bit PTS/DTS from its 5 bytes."""
    return ((field[0] >> 1) & 0x07) << 30 | field[1] << 22 | (field[2] >> 1) << 15 | field[3] << 7 | field[4] >> 1


def frame_schedule(data: bytes) -> tuple[list[tuple[int, float]], float]:
    """Where each video frame's packets start in ``data`` and when it is due, in seconds from the first
    frame (its DTS, or PTS when it has none), plus the loop's length (the last frame's time plus one frame
    interval). Bytes before the first frame (the PAT and PMT) go out with it."""
    if len(data) < PACKET or data[0] != 0x47:
        raise NotAVideoTransportStream("not an MPEG-TS file (no sync byte at its start)")
    starts: list[tuple[int, int]] = []
    for offset in range(0, len(data) - PACKET + 1, PACKET):
        if data[offset] != 0x47:
            raise NotAVideoTransportStream(f"lost the MPEG-TS sync at byte {offset}")
        if not data[offset + 1] & 0x40:  # not the start of a PES
            continue
        control = (data[offset + 3] >> 4) & 0x03
        if not control & 0x01:  # no payload
            continue
        payload = offset + 4 + (1 + data[offset + 4] if control & 0x02 else 0)
        pes = data[payload : offset + PACKET]
        if len(pes) < 14 or pes[:3] != b"\x00\x00\x01" or not 0xE0 <= pes[3] <= 0xEF:  # a video PES with its header
            continue
        flags = pes[7] >> 6
        if flags == 0b11 and len(pes) >= 19:
            starts.append((offset, _timestamp(pes[14:19])))
        elif flags & 0b10:
            starts.append((offset, _timestamp(pes[9:14])))
    if len(starts) < 2:
        raise NotAVideoTransportStream("no video frames with timestamps")
    first = starts[0][1]
    ticks = [(stamp - first) % (1 << 33) for _, stamp in starts]  # a clock that wrapped inside the clip
    steps = sorted(b - a for a, b in zip(ticks, ticks[1:]) if b > a) or [CLOCK // 30]
    schedule = [(0 if index == 0 else offset, tick / CLOCK) for index, ((offset, _), tick) in enumerate(zip(starts, ticks))]
    return schedule, (ticks[-1] + steps[len(steps) // 2]) / CLOCK


def handler_for(clip: Path) -> type[BaseHTTPRequestHandler]:
    data = clip.read_bytes()
    schedule, loop_s = frame_schedule(data)
    pieces = [(data[offset:end], due) for (offset, due), end in zip(schedule, [o for o, _ in schedule[1:]] + [len(data)])]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.lstrip("/") != clip.name:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            started, loops = time.monotonic(), 0
            try:
                while True:
                    for piece, due in pieces:
                        wait = started + loops * loop_s + due - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        self.wfile.write(piece)
                    loops += 1
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.bench.tsserver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("clip", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if not args.clip.is_file():
        print(f"tsserver: {args.clip}: no such file", file=sys.stderr)
        return 2
    try:
        handler = handler_for(args.clip)
    except NotAVideoTransportStream as exc:
        print(f"tsserver: {args.clip}: {exc}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
