"""The engine cache with the real ONNX Runtime builder (its artifact is the optimised model): hits,
rebuilds and their reasons, corrupt and truncated files, concurrent processes, a process killed while
building, pruning. The TensorRT builder goes through the same cache (tests/test_tensorrt_backend.py)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.config import parse_config
from daemon.engine.builders import OnnxRuntimeBuilder
from daemon.engine.cache import CacheMiss, EngineCache
from daemon.engine.fingerprint import file_sha256

from .conftest import REPO, asset


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "models" / "detector.onnx"
    path.parent.mkdir()
    shutil.copy(asset("models/yolov3_tiny_416.onnx"), path)
    return path


def builder_for(model: Path, **engine) -> OnnxRuntimeBuilder:
    config = parse_config(
        {"sources": [{"id": "s", "uri": "synthetic:64x64"}], "model": {"path": str(model), "pipeline": "detection"}, "engine": engine}
    )
    return OnnxRuntimeBuilder(config.model, config.engine)


class GpuSwapBuilder(OnnxRuntimeBuilder):
    """The real ONNX Runtime builder with a simulated device in its fingerprint (as if the GPU changed)."""

    gpu = "NVIDIA A100"

    def fingerprint(self):
        return {**super().fingerprint(), "device": {"gpu": self.gpu, "compute_capability": "8.0"}}


def test_build_then_hit(tmp_path, model):
    cache = EngineCache(tmp_path / "cache")
    first = cache.obtain(builder_for(model), model)
    assert first.outcome == "built"
    inode = first.entry.artifact.stat().st_ino
    second = cache.obtain(builder_for(model), model)
    assert second.outcome == "hit" and second.entry.name == first.entry.name
    assert second.entry.artifact.stat().st_ino == inode, "a hit does not rewrite the artifact"
    assert second.backend.info.details["artifact"] == first.entry.name.rsplit("-", 1)[-1]
    assert second.entry.meta["fingerprint"]["model"]["sha256"] == second.entry.meta["fingerprint"]["model"]["sha256"]


def test_changed_model_rebuilds_and_says_why(tmp_path, model, caplog):
    cache = EngineCache(tmp_path / "cache")
    old = cache.obtain(builder_for(model), model)
    shutil.copy(asset("models/yolov3_tiny_320.onnx"), model)
    with caplog.at_level(logging.INFO, logger="trtstream.engine.cache"):
        new = cache.obtain(builder_for(model), model)
    assert new.outcome == "built" and new.entry.name != old.entry.name
    assert "model.sha256" in caplog.text
    assert new.backend.info.inputs[0].shape == (-1, 3, 320, 320)


def test_changed_build_option_rebuilds(tmp_path, model, caplog):
    cache = EngineCache(tmp_path / "cache")
    cache.obtain(builder_for(model), model)
    with caplog.at_level(logging.INFO, logger="trtstream.engine.cache"):
        rebuilt = cache.obtain(builder_for(model, onnxruntime={"graph_optimization": "basic"}), model)
    assert rebuilt.outcome == "built"
    assert "build.options.graph_optimization: 'all' -> 'basic'" in caplog.text


def test_simulated_gpu_change_rebuilds_and_names_the_difference(tmp_path, model, caplog):
    cache = EngineCache(tmp_path / "cache")
    config_builder = builder_for(model)
    a100 = GpuSwapBuilder(config_builder.model, config_builder.engine)
    assert cache.obtain(a100, model).outcome == "built"
    h100 = GpuSwapBuilder(config_builder.model, config_builder.engine)
    h100.gpu = "NVIDIA H100"
    with caplog.at_level(logging.INFO, logger="trtstream.engine.cache"):
        assert cache.obtain(h100, model).outcome == "built"
    assert "build.device.gpu: 'NVIDIA A100' -> 'NVIDIA H100'" in caplog.text
    assert cache.obtain(a100, model).outcome == "hit", "both GPUs keep their own engine"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-with-matching-sidecar", "delete-sidecar"])
def test_damaged_entry_is_rebuilt_and_replaced_atomically(tmp_path, model, damage, caplog):
    cache = EngineCache(tmp_path / "cache")
    entry = cache.obtain(builder_for(model), model).entry
    data = entry.artifact.read_bytes()
    if damage == "truncate":
        entry.artifact.write_bytes(data[: len(data) // 3])
    elif damage == "flip":
        entry.artifact.write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:])
    elif damage == "garbage-with-matching-sidecar":  # passes the sha check, fails the load: validated by loading
        import hashlib
        import json

        garbage = b"not an onnx model" * 100
        entry.artifact.write_bytes(garbage)
        meta = json.loads(entry.sidecar.read_text())
        meta.update(artifact_size=len(garbage), artifact_sha256=hashlib.sha256(garbage).hexdigest())
        entry.sidecar.write_text(json.dumps(meta))
    else:
        entry.sidecar.unlink()
    damaged_inode = entry.artifact.stat().st_ino
    with pytest.raises(CacheMiss):
        cache.load_cached(builder_for(model), model)
    with caplog.at_level(logging.INFO, logger="trtstream.engine.cache"):
        healed = cache.obtain(builder_for(model), model)
    assert healed.outcome == "built" and healed.entry.artifact == entry.artifact
    assert healed.entry.artifact.stat().st_size == len(data) == healed.entry.meta["artifact_size"]
    assert file_sha256(healed.entry.artifact) == healed.entry.meta["artifact_sha256"]
    assert healed.entry.artifact.stat().st_ino != damaged_inode, "replaced by rename, not rewritten in place"
    assert cache.obtain(builder_for(model), model).outcome == "hit"
    assert not list(cache.directory.glob(".*.tmp"))


def engine_build(config: Path, cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "engine", "build", str(config), "--cache-dir", str(cache_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write_config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[[sources]]\nid = "s"\nuri = "synthetic:64x64"\n[model]\npath = "{model}"\npipeline = "detection"\n')
    return path


def test_two_processes_starting_at_once_build_once(tmp_path, model):
    cache = EngineCache(tmp_path / "cache")
    builder = builder_for(model)
    name = cache.entry_name(builder, model, cache.full_fingerprint(builder, model))
    lock_path = cache.directory / "locks" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True)
    config = write_config(tmp_path, model)
    with open(lock_path, "a+") as held:  # hold the entry's lock so both processes queue behind it
        fcntl.flock(held, fcntl.LOCK_EX)
        processes = [engine_build(config, cache.directory) for _ in range(2)]
        deadline = time.monotonic() + 60
        # Both must be blocked on the lock before it is released: each logs that it is waiting.
        logs = ["", ""]
        for index, process in enumerate(processes):
            while "another process is building" not in logs[index]:
                assert time.monotonic() < deadline, logs
                logs[index] += process.stderr.readline()
        fcntl.flock(held, fcntl.LOCK_UN)
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    outcomes = sorted(line.split(":")[0] for out in outputs for line in out.splitlines() if line.startswith(("built", "hit")))
    assert outcomes == ["built", "built-by-other-process"], outputs
    assert len(cache.entries()) == 1


def test_a_build_killed_mid_write_never_leaves_a_loadable_corrupt_entry(tmp_path, model):
    cache = EngineCache(tmp_path / "cache")
    config = write_config(tmp_path, model)
    process = engine_build(config, cache.directory)
    deadline = time.monotonic() + 60
    while not list(cache.directory.glob(".*.tmp")):  # the temporary artifact exists while it builds
        assert process.poll() is None, "the build finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert list(cache.directory.glob(".*.tmp")), "the kill left a partial file behind"
    with pytest.raises(CacheMiss):
        cache.load_cached(builder_for(model), model)
    assert cache.obtain(builder_for(model), model).outcome == "built", "the next start builds cleanly"
    removed = cache.prune().removed
    assert removed and all(p.name.endswith(".tmp") for p in removed)
    assert cache.obtain(builder_for(model), model).outcome == "hit"


def test_prune_keeps_the_most_recently_used_entry_per_model(tmp_path, model):
    cache = EngineCache(tmp_path / "cache")
    old = cache.obtain(builder_for(model, onnxruntime={"graph_optimization": "basic"}), model).entry
    os.utime(old.sidecar, (time.time() - 3600, time.time() - 3600))
    current = cache.obtain(builder_for(model), model).entry
    (cache.directory / "unrelated.txt").write_text("not ours")
    removed = cache.prune(keep=1).removed
    assert sorted(removed) == sorted([old.artifact, old.sidecar])
    assert current.artifact.exists() and (cache.directory / "unrelated.txt").exists()


def cache_files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under the cache, with its size and mtime: what "left intact" means."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file()}


def engine_prune(cache_dir: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "engine", "prune", "--cache-dir", str(cache_dir), *options],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("keep", ["0", "-1"])
def test_prune_refuses_keep_below_one_and_leaves_the_cache_intact(tmp_path, model, keep):
    cache = EngineCache(tmp_path / "cache")
    obtained = cache.obtain(builder_for(model), model)
    obtained.lease.release()
    before = cache_files(cache.directory)
    done = engine_prune(cache.directory, "--keep", keep)
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [done.stderr.strip()] and f"--keep {keep}: must be at least 1" in done.stderr, done.stderr
    assert done.stdout == ""
    assert cache_files(cache.directory) == before
    with pytest.raises(ValueError):
        cache.prune(keep=int(keep))


def test_prune_leaves_the_engine_a_running_daemon_has_loaded(tmp_path, model, start_daemon, free_port):
    """The daemon serves with a cached engine that prune would remove (unused for days by its sidecar's
    mtime): prune keeps it and says so; once the daemon has exited, the same prune removes it."""
    from daemon.client import ResultSubscriber
    from daemon.config import load_config

    from .conftest import collect, detector_config

    cache_dir = tmp_path / "cache"
    config_path = tmp_path / "daemon.toml"
    config_path.write_text(detector_config(
        '[[sources]]\nid = "cam"\nuri = "synthetic:320x240@25"\n', free_port,
        engine=f'max_batch = 4\nmax_wait_ms = 5\ncache_dir = "{cache_dir}"',
    ))
    config = load_config(config_path)
    built = EngineCache(cache_dir).obtain(OnnxRuntimeBuilder(config.model, config.engine), config.model.path)
    built.lease.release()  # this test process must not be what protects the engine
    built.backend.close()
    entry = built.entry
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}", sources=["cam"]) as subscriber:
        daemon = start_daemon(config_path.read_text())
        served = collect(subscriber, lambda ms: any(m.type == "result" for m in ms), timeout=60, daemon=daemon)
        artifact = next(m for m in served if m.type == "result").header["model"]["artifact"]
        assert entry.name.endswith(f"-{artifact}"), "the daemon serves with the cached engine"
        three_days_ago = time.time() - 3 * 86400
        os.utime(entry.sidecar, (three_days_ago, three_days_ago))
        while_serving = engine_prune(cache_dir, "--older-than-days", "1")
        assert while_serving.returncode == 0, while_serving
        assert f"kept {entry.name}: in use by a running process" in while_serving.stdout, while_serving.stdout
        assert entry.artifact.exists() and entry.sidecar.exists()
        daemon.terminate()
        assert daemon.wait(30) == 0, daemon.stderr
    after_exit = engine_prune(cache_dir, "--older-than-days", "1")
    assert after_exit.returncode == 0, after_exit
    assert "in use" not in after_exit.stdout
    assert not entry.artifact.exists() and not entry.sidecar.exists(), after_exit.stdout
