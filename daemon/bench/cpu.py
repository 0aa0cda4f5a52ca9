"""CPU benchmark (``trtstream bench cpu``): engine-only vs whole-pipeline throughput, side by side in one run.

engine-only  ONNX Runtime on ready-made, already-preprocessed batches (the ceiling).
pipeline     the daemon itself: decode bikes.mp4 -> preprocess -> batch -> infer -> decode -> publish
             (ZeroMQ, no subscriber), same model, same batch size, same session options.

The two alternate for --rounds rounds so drift (thermal, other load) hits both alike; the table gives
the median of each, the ratio pipeline / engine-only (target >= 0.9) and each side's spread between
rounds, with a warning (also on stderr) when that spread makes the ratio meaningless (daemon/bench/rounds.py).

Usage: trtstream bench cpu [--config configs/default.toml] [--batch 4] [--frames 500] [--rounds 3]
       (scripts/bench-cpu is the same)
(run scripts/setup and scripts/fetch-assets first; scripts/demo does both)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from daemon.backends import create_backend
from daemon.bench.rounds import RoundsVerdict, judge_rounds
from daemon.config import load_config
from daemon.errors import UserError
from daemon.gil import apply_switch_interval
from daemon.service import Daemon
from daemon.serving import build_unit

REPO = Path(__file__).resolve().parents[2]  # a checkout: assets/ and configs/ live here
TARGET_RATIO = 0.9


def decode_all(path: str) -> list:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def engine_only(config, frames: list, batch: int, count: int) -> float:
    backend = create_backend(config.model, config.engine)
    unit = build_unit(config.model, config.engine, backend)  # configured as the daemon configures it
    batches = []
    for start in range(0, batch * 8, batch):  # 8 distinct ready-made batches, reused
        slot = backend.create_slot(len(batches))
        for row in range(batch):
            backend.stage(slot, row, frames[(start + row) % len(frames)], unit.pipeline)
        batches.append(slot)
    for slot in batches[:1]:
        backend.submit(slot, batch)
        backend.wait(slot)
    rounds = max(1, count // batch)
    started = time.perf_counter()
    for i in range(rounds):
        slot = batches[i % len(batches)]
        backend.submit(slot, batch)
        backend.wait(slot)
    elapsed = time.perf_counter() - started
    backend.close()
    return rounds * batch / elapsed


def pipeline_fps(config, batch: int, count: int, video: str, *, prepare=None, on_started=None) -> tuple[float, dict]:
    """The whole daemon (in this process) on ``count`` frames of ``video``, unpaced: results per second from
    serving to the last result published (its exit after that, which stops servers and sinks, not counted). ``prepare(config)`` may change the config first; ``on_started(daemon)``
    runs once it serves and returns what is called (with no arguments) after it ended."""
    run_dir = tempfile.mkdtemp(prefix="trtstream-bench-")
    config = config.model_copy(deep=True)
    source = config.sources[0]
    source.uri, source.pace, source.loop, source.max_frames = video, False, True, count
    config.sources = [source]
    config.engine.max_batch = batch
    config.publisher.endpoints = [f"ipc://{run_dir}/bench.ipc"]
    config.publisher.wait_for_subscribers = 0
    config.control.endpoint = f"ipc://{run_dir}/control.ipc"  # never a running daemon's socket (it would refuse to start)
    if prepare is not None:
        prepare(config)
    daemon = Daemon(config)
    finished = {}
    published = daemon._on_published

    def timed(result, header) -> None:  # the publisher thread: the end is the last result out, not the exit after it
        published(result, header)
        finished["last"] = time.perf_counter()

    daemon._on_published = timed

    def run() -> None:
        try:
            finished["code"] = daemon.run()
        except UserError as exc:  # a port or socket taken, a file it cannot read: one line, below
            finished["error"] = exc
        finished["time"] = time.perf_counter()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not daemon.started.wait(0.1):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit(f"bench: the daemon did not start: {finished.get('error', 'not within 120 s')}")
    started = time.perf_counter()
    after = on_started(daemon) if on_started is not None else None
    thread.join()
    if after is not None:
        after()
    stats = daemon.source_stats[source.id]
    count_published = stats.frames_published
    if count_published != count:
        raise SystemExit(f"bench: expected {count} results, got {count_published}")
    return count_published / (finished.get("last", finished["time"]) - started), daemon._scheduler.stats.snapshot()


def bench_config(path: str, prog: str):
    """What an in-process daemon benchmark sets up before its rounds: the daemon's GIL switch interval
    (daemon/gil.py: its pipeline, measured as it runs), warnings-only logging, and the config (None, the
    error printed as one line, when it is invalid)."""
    apply_switch_interval()
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        return load_config(path)
    except UserError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtstream bench cpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500, help="frames per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = bench_config(args.config, "trtstream bench cpu")
    if config is None:
        return 2
    video = config.sources[0].uri
    frames = decode_all(video)
    engine_runs, pipeline_runs, batch_sizes = [], [], []
    for round_index in range(args.rounds):
        engine_runs.append(engine_only(config, frames, args.batch, args.frames))
        fps, snapshot = pipeline_fps(config, args.batch, args.frames, video)
        pipeline_runs.append(fps)
        batch_sizes.append(snapshot["mean_batch_size"])
        print(f"round {round_index + 1}: engine-only {engine_runs[-1]:7.1f} fps   pipeline {fps:7.1f} fps", flush=True)
    engine, pipeline = statistics.median(engine_runs), statistics.median(pipeline_runs)
    verdict = judge_rounds(engine_runs, pipeline_runs, TARGET_RATIO)
    print()
    print(f"model     {config.model.path.name}   video {Path(video).name}   batch {args.batch}   frames/run {args.frames}")
    print(f"machine   {os.cpu_count()} CPU cores, ONNX Runtime CPU, intra-op threads {config.engine.onnxruntime.intra_op_threads or 'default'}")
    print(f"{'measure':<28}{'fps (median of ' + str(args.rounds) + ')':>22}")
    print(f"{'engine-only (ready batches)':<28}{engine:>22.1f}")
    print(f"{'pipeline (decode..publish)':<28}{pipeline:>22.1f}")
    print(f"{'ratio pipeline/engine-only':<28}{verdict.ratio:>22.3f}   (target >= {TARGET_RATIO})")
    print(f"{'mean pipeline batch size':<28}{statistics.median(batch_sizes):>22.2f}")
    report_spread(verdict)
    return 0


def report_spread(verdict: RoundsVerdict, names: tuple[str, str] = ("engine-only", "pipeline"), prog: str = "trtstream bench cpu") -> None:
    """The rounds' spread under the table, and its warning both there and on stderr: the printed table
    is what gets pasted into docs, stderr is what a script running the benchmark sees. ``names``: what
    the two measurements are called, ``prog`` the benchmark that prints."""
    if verdict.engine_spread is not None and verdict.pipeline_spread is not None:
        spreads = f"{names[0]} {verdict.engine_spread:.1%}, {names[1]} {verdict.pipeline_spread:.1%}"
        print(f"{'spread between rounds':<28}{spreads:>22}   ((max - min) / median)")
    if verdict.warning:
        print(f"warning: {verdict.warning}", flush=True)
        print(f"{prog}: warning: {verdict.warning}", file=sys.stderr)
