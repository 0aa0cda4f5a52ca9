"""Self-healing start through the real daemon: fallback then switch-over without losing a frame,
'wait' and 'fail' policies, and 'trtstream engine build' making the next start a cache hit.

ONNX Runtime on the plain model -> ONNX Runtime on its cached optimised model stands in, on the CPU,
for the fallback -> TensorRT switch-over on a GPU (same code path: EngineProvider + Scheduler swap)."""

from __future__ import annotations

import subprocess
import sys

from daemon.client import ResultSubscriber

from .conftest import REPO, all_ended, asset, collect, detector_config


def results(messages):
    return [m for m in messages if m.type == "result"]


def bikes_config(port: int, cache_dir, policy: str) -> str:
    return detector_config(
        f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\n',
        port,
        engine=f'max_batch = 4\nmax_wait_ms = 5\nbackend = "onnxruntime"\non_missing_engine = "{policy}"\ncache_dir = "{cache_dir}"',
    )


def test_fallback_serves_at_once_then_switches_to_the_built_engine_without_losing_a_frame(start_daemon, free_port, tmp_path):
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(bikes_config(free_port, tmp_path / "cache", "fallback"))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    frames = results(messages)
    assert [m.header["frame"]["index"] for m in frames] == list(range(250)), "no frame lost across the switch"
    artifacts = [m.header["model"]["artifact"] for m in frames]
    assert artifacts[0] is None, "the first results come from the fallback (plain model)"
    switch = artifacts.index(next(a for a in artifacts if a is not None))
    assert all(a is None for a in artifacts[:switch]) and len(set(artifacts[switch:])) == 1, "one switch, never back"
    assert "switched inference from onnxruntime to onnxruntime" in daemon.stderr
    engine_states = [m.header["engine"]["state"] for m in messages if m.type == "heartbeat"]
    assert engine_states[-1] == "serving"


def test_engine_build_ahead_of_time_makes_the_first_result_come_from_the_cache(start_daemon, free_port, tmp_path):
    config_text = bikes_config(free_port, tmp_path / "cache", "fail")
    config_path = tmp_path / "aot.toml"
    config_path.write_text(config_text)
    # 'fail' without a cached engine: a one-line error that says what to run, exit 1.
    refused = subprocess.run([sys.executable, "-m", "daemon", "run", str(config_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("trtstream: error: engine.on_missing_engine = 'fail'")
    assert "trtstream engine build" in refused.stderr and "Traceback" not in refused.stderr
    built = subprocess.run(
        [sys.executable, "-m", "daemon", "engine", "build", str(config_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0 and built.stdout.splitlines()[-1].startswith("built: "), built
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config_text)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    artifacts = {m.header["model"]["artifact"] for m in results(messages)}
    assert len(artifacts) == 1 and None not in artifacts, "every result, the first included, from the cached engine"
    assert "engine cache hit" in daemon.stderr


def test_wait_policy_builds_before_serving(start_daemon, free_port, tmp_path):
    config = bikes_config(free_port, tmp_path / "cache", "wait").replace('uri = "', 'max_frames = 20\nuri = "', 1)
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    frames = results(messages)
    assert len(frames) == 20 and all(m.header["model"]["artifact"] for m in frames)
