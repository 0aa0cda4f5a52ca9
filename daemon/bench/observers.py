"""The cost of watching: the daemon's pipeline with the live view open in a real browser and the MQTT sink
on (a real mosquitto), against the same pipeline without them, alternating rounds in one run (issue 14:
>= 0.95 x).

Each round runs the whole daemon (ONNX Runtime on the CPU, or whatever ``--config`` says) on ``--frames``
frames of the config's first source, unpaced, once plain and once with ``[view]`` enabled, a headless
Chromium showing the source's page (MJPEG at ``view.fps``) for the whole run, and an ``[[sinks]]`` MQTT
sink publishing events, heartbeats and results (at ``--results-per-second``) to a mosquitto started
here. Chromium and mosquitto are separate processes, as they are in use. The ratio is with / without,
medians over the rounds, judged with the rounds' spread (daemon/bench/rounds.py).

Usage: python -m daemon.bench.observers [--config configs/default.toml] [--frames 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..netaddr import free_loopback_port
from ..sinkconfig import MqttSinkConfig
from .cpu import REPO, bench_config, pipeline_fps, report_spread
from .rounds import judge_rounds

TARGET_RATIO = 0.95



def _mosquitto(directory: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("bench observers: needs mosquitto (apt install mosquitto)")
    port = free_loopback_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("bench observers: mosquitto did not start")


def _browser(directory: Path, viewer: str):
    """What opens the view once the daemon serves, and closes it after: a headless Chromium showing the
    source's page, or (``--viewer curl``) curl reading its MJPEG stream, which costs next to no CPU and
    so leaves the daemon's own cost of serving a viewer."""
    binary = shutil.which(viewer if viewer == "curl" else "chromium") or (shutil.which("chromium-browser") if viewer != "curl" else None)
    if binary is None:
        raise SystemExit(f"bench observers: needs {viewer} (apt install {viewer})")

    def open_view(daemon):
        port, source = daemon._view_server.port, daemon.config.sources[0].id
        if viewer == "curl":
            command = [binary, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/sources/{source}/stream.mjpg"]
        else:
            command = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={directory / 'profile'}",
                       "--remote-debugging-port=0", f"http://127.0.0.1:{port}/sources/{source}"]  # fmt: skip
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def close() -> None:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
        return close

    return open_view


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.bench.observers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-per-second", type=float, default=5.0, help="the MQTT sink's results per source")
    parser.add_argument("--viewer", choices=["chromium", "curl"], default="chromium",
                        help="who watches: a real browser (default), or curl reading the stream (the daemon's own cost)")
    args = parser.parse_args(argv)
    config = bench_config(args.config, "bench observers")
    if config is None:
        return 2
    work = Path(tempfile.mkdtemp(prefix="trtstream-bench-observers-"))
    broker, broker_port = _mosquitto(work)
    open_view = _browser(work, args.viewer)
    video = config.sources[0].uri

    def watched(config) -> None:
        config.view.enabled, config.view.port = True, free_loopback_port()
        config.sinks = [MqttSinkConfig(kind="mqtt", host="127.0.0.1", port=broker_port, results=True,
                                       results_per_second=args.results_per_second)]  # fmt: skip

    plain_runs, watched_runs, pictures = [], [], []
    try:
        for round_index in range(args.rounds):
            plain, _ = pipeline_fps(config, args.batch, args.frames, video)
            seen: dict = {}

            def on_started(daemon, seen=seen):
                close = open_view(daemon)

                def after() -> None:
                    close()
                    seen.update(daemon._view.stats.snapshot(), sink=daemon._sinks[0].stats.snapshot())
                return after

            with_them, _ = pipeline_fps(config, args.batch, args.frames, video, prepare=watched, on_started=on_started)
            plain_runs.append(plain)
            watched_runs.append(with_them)
            pictures.append(seen)
            print(f"round {round_index + 1}: plain {plain:7.1f} fps   view + MQTT {with_them:7.1f} fps   "
                  f"(view pictures {seen.get('pictures')}, MQTT acknowledged {seen.get('sink', {}).get('acknowledged')})", flush=True)  # fmt: skip
    finally:
        broker.terminate()
        broker.wait(10)
    verdict = judge_rounds(plain_runs, watched_runs, TARGET_RATIO)
    print()
    print(f"model     {config.model.path.name}   video {Path(video).name}   batch {args.batch}   frames/run {args.frames}   {os.cpu_count()} CPU cores")
    print(f"{'measure':<34}{'fps (median of ' + str(args.rounds) + ')':>22}")
    print(f"{'pipeline':<34}{statistics.median(plain_runs):>22.1f}")
    print(f"{'pipeline, view open + MQTT sink':<34}{statistics.median(watched_runs):>22.1f}   (viewer: {args.viewer})")
    print(f"{'ratio with / without':<34}{verdict.ratio:>22.3f}   (target >= {TARGET_RATIO})")
    report_spread(verdict, ("plain", "view + MQTT"), "bench observers")
    if not all(p.get("pictures") for p in pictures):
        print("warning: a round drew no picture: the browser did not watch (the ratio proves nothing)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
