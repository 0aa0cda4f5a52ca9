"""Decode ceiling (``trtstream bench decode``): what this machine decodes with N parallel OpenCV captures
and no inference, so a camera count measured in the daemon is read as a fraction of the machine's own
limit (issue 13, item 6), and what a frame costs when it is only gone past (``grab()`` without
``retrieve()``: ``sources[].skip_when_full``) beside one converted to BGR (``read()``).

Each capture is a thread with its own ``cv2.VideoCapture`` on the same clip, unpaced and looping, with
``decoder_threads`` FFmpeg threads (the daemon's default, 2). For every N the two ways alternate, each for
``--seconds``; frames per second are summed over the captures, CPU is the process's.

Not measured here: NVDEC (``scripts/probe-gil simple`` on a GPU machine counts NVDEC frames per second
for N decoders).

Usage: trtstream bench decode [--clip FILE] [--captures 1,2,4] [--decoder-threads 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import cv2

from daemon.capture import decoder_threads as decoder_thread_params

REPO = Path(__file__).resolve().parents[2]
CLIPS = (REPO / ".cache" / "bikes_1080p30.mp4", REPO / "assets" / "media" / "bikes.mp4")


def measure(clip: Path, captures: int, decoder_threads: int, seconds: float, convert: bool) -> tuple[float, float]:
    """(frames per second over all captures, process CPU ms per frame) for ``captures`` parallel
    captures that ``read()`` (convert) or only ``grab()`` every frame."""
    params = decoder_thread_params(decoder_threads)  # as the daemon opens a file
    opened = [cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG, params) for _ in range(captures)]
    if not all(capture.isOpened() for capture in opened):
        raise SystemExit(f"bench decode: OpenCV cannot open {clip}")
    stop = threading.Event()
    counts = [0] * captures

    def run(index: int) -> None:
        capture = opened[index]
        step = capture.read if convert else capture.grab
        while not stop.is_set():
            result = step()
            if not (result[0] if convert else result):
                if not capture.set(cv2.CAP_PROP_POS_FRAMES, 0) or not capture.grab():  # the end, or a clip it cannot decode
                    return
                continue
            counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(captures)]
    for thread in threads:
        thread.start()
    time.sleep(min(1.0, seconds / 3))  # decoders started, first keyframes decoded
    start_counts, start_cpu, start = sum(counts), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    frames, cpu, wall = sum(counts) - start_counts, time.process_time() - start_cpu, time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join(10)
    for capture in opened:
        capture.release()
    return frames / wall, cpu * 1000 / max(frames, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtstream bench decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=next((c for c in CLIPS if c.is_file()), CLIPS[-1]))
    cores = os.cpu_count() or 1
    parser.add_argument("--captures", default=",".join(str(n) for n in sorted({1, min(cores, 16), min(2 * cores, 32)})))
    parser.add_argument("--decoder-threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if not args.clip.is_file():
        print(f"bench decode: {args.clip}: no such file (scripts/make-test-clips, or scripts/fetch-assets for bikes.mp4)")
        return 2
    probe = cv2.VideoCapture(str(args.clip))
    size = f"{int(probe.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(probe.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    probe.release()
    print(f"decode ceiling: {args.clip.name} ({size}), OpenCV {cv2.__version__}, {cores} CPUs, decoder_threads {args.decoder_threads}, "
          f"{args.seconds:g} s per row")  # fmt: skip
    print(f"{'captures':>8}  {'read fps':>9}  {'CPU ms/frame':>12}  {'grab fps':>9}  {'CPU ms/frame':>12}  {'grab CPU / read CPU':>19}")
    for captures in (int(n) for n in args.captures.split(",")):
        read_fps, read_cpu = measure(args.clip, captures, args.decoder_threads, args.seconds, convert=True)
        grab_fps, grab_cpu = measure(args.clip, captures, args.decoder_threads, args.seconds, convert=False)
        ratio = grab_cpu / read_cpu if read_cpu > 0 else float("nan")
        print(f"{captures:>8}  {read_fps:>9.1f}  {read_cpu:>12.3f}  {grab_fps:>9.1f}  {grab_cpu:>12.3f}  {ratio:>19.3f}", flush=True)
    return 0
