"""An HTTP MPEG-TS camera (issue 13, item 8): daemon/bench/tsserver.py serves the sample clip remuxed to
MPEG-TS (PyAV, no re-encoding), looping and paced at its own rate, from a process of its own; the real
daemon reads it with OpenCV's FFmpeg as it reads a network camera, and reconnects when the server goes
away and comes back. Every wait is a poll with a deadline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.client import ResultSubscriber

from .conftest import REPO, all_ended, asset, collect, detector_config


def remux_to_ts(source: Path, target: Path) -> Path:
    av = pytest.importorskip("av", reason="needs PyAV (the pyav extra) to remux the clip to MPEG-TS")
    with av.open(str(source)) as src, av.open(str(target), "w", format="mpegts") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    return target


class TsCamera:
    def __init__(self, clip: Path):
        self.clip = clip
        self.port = 0
        self._process: subprocess.Popen | None = None

    def start(self) -> "TsCamera":
        command = [sys.executable, "-m", "daemon.bench.tsserver", str(self.clip), "--port", str(self.port)]
        self._process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        assert line.startswith("ready "), f"tsserver said {line!r}"
        self.port = int(line.split()[1])  # the same port again after a restart
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.clip.name}"


def results(messages):
    return [m for m in messages if m.type == "result"]


def state(messages) -> dict:
    beats = [m for m in messages if m.type == "heartbeat" and m.header["sources"]]
    return beats[-1].header["sources"][0] if beats else {}


def test_an_http_mpeg_ts_camera_is_served_and_reconnected(start_daemon, free_port, tmp_path):
    camera = TsCamera(remux_to_ts(asset("media/bikes.mp4"), tmp_path / "bikes.ts")).start()
    try:
        config = detector_config(
            f'[[sources]]\nid = "ts"\nuri = "{camera.url}"\n[sources.reconnect]\ninitial_delay_s = 0.2\nmax_delay_s = 1.0\n'
            "open_timeout_s = 3\nread_timeout_s = 1\n", free_port, engine="max_batch = 2\nmax_wait_ms = 5",
        ) + "\n[daemon]\nexit_when_sources_end = false\n"  # fmt: skip
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(config)
            before = collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=90, daemon=daemon)
            camera.stop()
            down = collect(subscriber, lambda ms: state(ms).get("reconnects", 0) >= 1, timeout=30, daemon=daemon)
            camera.start()
            after = collect(subscriber, lambda ms: len(results(ms)) >= 10 and state(ms).get("state") == "running", timeout=90, daemon=daemon)
            daemon.terminate()
            collect(subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
    finally:
        camera.stop()
    frame = results(before)[0].header["frame"]
    assert (frame["width"], frame["height"]) == (640, 272) and frame["pts_ms"] is None, "a live stream: no file position"
    indexes = [m.header["frame"]["index"] for m in results(before + down + after)]
    assert indexes == sorted(set(indexes)), "no frame published twice"
    assert state(after)["reconnects"] >= 1 and state(after)["kind"] == "stream"
