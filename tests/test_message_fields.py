"""docs/messages.md and the JSON Schema say what the daemon really emits: frame.pts_ms for file and live
sources, the results' model.artifact, the heartbeat's engine and reload. Real daemon subprocesses,
real model and video, real ZeroMQ; every message goes through the schema (``collect``)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from daemon.client import ResultSubscriber

from .conftest import REPO, all_ended, asset, collect, detector_config, validate_message

MESSAGES_DOC = REPO / "docs" / "messages.md"


def results(messages, source: str | None = None):
    return [m for m in messages if m.type == "result" and (source is None or m.source_id == source)]


def heartbeats(messages):
    return [m for m in messages if m.type == "heartbeat"]


def doc_row(field: str) -> str:
    """The line of the field's row in a table of docs/messages.md."""
    (row,) = [line for line in MESSAGES_DOC.read_text().splitlines() if line.startswith(f"| `{field}` |")]
    return row


def test_pts_ms_is_the_file_position_without_float_noise_and_null_for_live_sources(start_daemon, free_port):
    sources = f"""
[[sources]]
id = "bikes"
uri = "{asset('media/bikes.mp4')}"
max_frames = 60
[[sources]]
id = "pattern"
uri = "synthetic:64x48@25"
max_frames = 10
"""
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(sources, free_port))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    files = [m.header["frame"] for m in results(messages, "bikes")]
    assert [f["index"] for f in files] == list(range(60))
    # bikes.mp4 is 25 fps: frame i is at i * 40 ms; FFmpeg's float conversion gives 1400.0000000000002 for i = 35.
    assert [f["pts_ms"] for f in files] == [i * 40.0 for i in range(60)]
    assert all(round(f["pts_ms"], 3) == f["pts_ms"] for f in files)
    live = [m.header["frame"] for m in results(messages, "pattern")]
    assert live and all(f["pts_ms"] is None for f in live)  # a live source may drop frames (drop_oldest): not all 10
    row = doc_row("frame.pts_ms")
    assert "`null`" in row and "`synthetic`" in row and "microsecond" in row, "the doc says what the test saw"


def cached_config(port: int, cache_dir) -> str:
    return detector_config(
        '[[sources]]\nid = "cam"\nuri = "synthetic:64x48@10"\n',
        port,
        engine=f'max_batch = 4\nmax_wait_ms = 5\nbackend = "onnxruntime"\ncache_dir = "{cache_dir}"',
    )


def test_results_and_heartbeats_carry_artifact_engine_and_reload_as_documented(start_daemon, free_port, tmp_path):
    config_text = cached_config(free_port, tmp_path / "engines")
    config_path = tmp_path / "daemon.toml"  # start_daemon writes the same file, which SIGHUP re-reads
    config_path.write_text(config_text)
    built = subprocess.run([sys.executable, "-m", "daemon", "engine", "build", str(config_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr[-2000:]
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config_text)
        messages = collect(subscriber, lambda ms: len(results(ms)) >= 2 and heartbeats(ms), timeout=60, daemon=daemon)
        daemon.process.send_signal(signal.SIGHUP)  # the same, valid config: applied
        messages += collect(subscriber, lambda ms: any(h.header["reload"]["count"] == 1 for h in heartbeats(ms)), timeout=30, daemon=daemon)
        config_path.write_text(config_text.replace("[engine]", "[engine]\nwarmup = 'sometimes'"))
        daemon.process.send_signal(signal.SIGHUP)  # an invalid one: rejected
        messages += collect(subscriber, lambda ms: any(h.header["reload"]["last_error"] for h in heartbeats(ms)), timeout=30, daemon=daemon)
        daemon.terminate()
        messages += collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    (artifact,) = {m.header["model"]["artifact"] for m in results(messages)}
    assert re.fullmatch(r"[0-9a-f]{16}", artifact), "every result from the cached engine, named by its key"
    engine = heartbeats(messages)[-1].header["engine"]
    assert engine["state"] == "serving" and engine["source"] == "cache" and engine["progress"] == 1.0
    assert engine["artifact"] == f"yolov3_tiny_416-onnxruntime-{artifact}", "the heartbeat names the entry the results' key ends"
    reload = heartbeats(messages)[-1].header["reload"]
    assert reload["count"] == 1 and "engine.warmup" in reload["last_error"]
    assert reload["failed_at"] >= reload["reloaded_at"]
    doc = MESSAGES_DOC.read_text()
    for key in {*engine, *reload}:
        assert f"`{key}`" in doc, f"heartbeat field {key} is emitted but not in docs/messages.md"
    assert doc_row("model.artifact")


def test_the_schema_rejects_what_it_does_not_describe(start_daemon, free_port):
    """The checks above can fail only if the schema is strict where the doc is exhaustive."""
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 4\n', free_port))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    heartbeat, result = heartbeats(messages)[-1].header, results(messages)[0].header
    for broken in (
        {**heartbeat, "engine": {**heartbeat["engine"], "undocumented": 1}},
        {**heartbeat, "reload": {**heartbeat["reload"], "undocumented": 1}},
        {key: value for key, value in heartbeat.items() if key != "reload"},
        {**result, "model": {key: value for key, value in result["model"].items() if key != "artifact"}},
        {**result, "model": {**result["model"], "artifact": "not-a-key"}},
    ):
        with pytest.raises(AssertionError, match="does not match"):
            validate_message(broken)
