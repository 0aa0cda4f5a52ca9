"""A network camera for benchmarks and tests: an MPEG-TS clip served over HTTP, looping, paced at the clip's
own rate (issue 13, item 8: the GPU machine has no RTSP server, and FFmpeg — OpenCV's and PyNvVideoCodec's
demuxer — reads MPEG-TS over HTTP as it reads a camera's stream).

Run it as a process of its own (``python -m daemon.bench.tsserver CLIP.ts``), never as a thread of the
process that reads it: PyNvVideoCodec's demuxer keeps the GIL while it waits for network data
(``scripts/probe-gil``), so a server thread beside it would never get to send.

Each GET of ``/<file name>`` streams the clip from its start, again and again, at its average byte rate (its
size over its duration, which OpenCV reads from it), in chunks of a tenth of a second, until the client
goes away. It prints ``ready <port>`` once it listens.

Usage: python -m daemon.bench.tsserver CLIP.ts [--port 0] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK_S = 0.1


def byte_rate(clip: Path) -> float:
    """The clip's average bytes per second (size over duration)."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    if not (frames > 0 and fps > 0):
        raise SystemExit(f"tsserver: {clip}: OpenCV cannot read its frame count and rate")
    return clip.stat().st_size / (frames / fps)


def handler_for(clip: Path, rate: float) -> type[BaseHTTPRequestHandler]:
    data = clip.read_bytes()
    chunk = max(188, int(rate * CHUNK_S) // 188 * 188)  # whole 188-byte transport packets

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.lstrip("/") != clip.name:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            started, sent = time.monotonic(), 0
            try:
                while True:
                    for offset in range(0, len(data), chunk):
                        piece = data[offset : offset + chunk]
                        due = started + sent / rate
                        if due > time.monotonic():
                            time.sleep(due - time.monotonic())
                        self.wfile.write(piece)
                        sent += len(piece)
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
    server = ThreadingHTTPServer((args.host, args.port), handler_for(args.clip, byte_rate(args.clip)))
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
