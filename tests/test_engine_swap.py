"""A background engine build that finishes after its provider was retired never swaps in (issue 10,
item 4): a reload that replaced the model retires the old provider, and the old model's engine must
not come back over the new one.

Real parts: the ONNX Runtime engine of the real YOLOv3-tiny model, built into a real cache. The one
thing held is the moment: ``cache.obtain`` is wrapped to wait on an event before building, so the test
can retire the provider while the build is in flight (on a real machine it takes minutes, for TensorRT).
"""

from __future__ import annotations

import threading
from pathlib import Path

from daemon.config import parse_config
from daemon.engine.cache import EngineCache
from daemon.engine.lifecycle import EngineProvider

from .conftest import asset


def provider_for(cache_dir: Path) -> EngineProvider:
    config = parse_config({
        "sources": [{"id": "cam", "uri": "synthetic:64x48@5"}],
        "model": {"path": str(asset("models/yolov3_tiny_416.onnx")), "pipeline": "detection"},
        "engine": {"backend": "onnxruntime", "on_missing_engine": "fallback", "cache_dir": str(cache_dir), "max_batch": 2},
    })
    return EngineProvider(config.model, config.engine)


def held_build(provider: EngineProvider) -> tuple[threading.Event, threading.Event]:
    """(entered, release): the build starts, says so, and waits for ``release`` before building."""
    entered, release = threading.Event(), threading.Event()
    real_obtain = provider.cache.obtain

    def obtain(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real_obtain(*args, **kwargs)

    provider.cache.obtain = obtain
    return entered, release


def build_thread(provider: EngineProvider) -> threading.Thread:
    return provider._thread  # the provider's own build thread, to join on


def serving_with_a_held_build(cache_dir: Path):
    """A provider serving on its fallback, its background build started and held: (provider, fallback,
    what it delivered, the event that releases the build)."""
    provider = provider_for(cache_dir)
    fallback = provider.start()
    delivered: list = []
    provider.set_on_ready(delivered.append)
    entered, release = held_build(provider)
    provider.begin_background_build()
    assert entered.wait(30)
    return provider, fallback, delivered, release


def test_a_build_finishing_after_its_provider_was_retired_is_discarded(tmp_path: Path) -> None:
    provider, fallback, delivered, release = serving_with_a_held_build(tmp_path / "cache")
    assert provider.close(timeout=0) is False, "the build is still running: not done yet"
    release.set()
    build_thread(provider).join(60)
    assert delivered == [], "a retired provider handed its engine over"
    assert provider.close(timeout=10) is True
    # Its lease went with it: prune may remove the discarded engine (nothing holds it in use).
    pruned = EngineCache(tmp_path / "cache").prune(keep=1, dry_run=True)
    assert pruned.in_use == []
    fallback.close()


def test_the_same_build_without_a_retirement_is_delivered_once(tmp_path: Path) -> None:
    provider, fallback, delivered, release = serving_with_a_held_build(tmp_path / "cache")
    release.set()
    build_thread(provider).join(60)
    assert len(delivered) == 1 and delivered[0].info.name == "onnxruntime"
    assert provider.status()["state"] == "switching"
    delivered[0].close()
    fallback.close()
    assert provider.close(timeout=10) is True


def test_a_build_done_before_anyone_took_it_is_closed_with_its_provider(tmp_path: Path) -> None:
    provider = provider_for(tmp_path / "cache")
    fallback = provider.start()
    provider.begin_background_build()
    build_thread(provider).join(60)
    assert provider.close(timeout=10) is True
    late = []
    provider.set_on_ready(late.append)  # after close: nothing is handed over any more
    assert late == []
    fallback.close()


def poll(condition, timeout: float) -> bool:
    """True as soon as ``condition()`` holds, False after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def input_width(daemon) -> int:
    return daemon._scheduler.backend.info.inputs[0].shape[-1]


def test_a_reload_that_changes_the_model_retires_the_old_build(tmp_path: Path, free_port: int, monkeypatch) -> None:
    """The whole daemon, in process: serving on the fallback while the first model's engine builds, a
    reload switches to another model; the first build, finishing afterwards, is discarded and the new
    model keeps serving. (Before: the old provider was never closed and swapped its engine back in.)"""
    from daemon.config import load_config
    from daemon.service import Daemon

    from .conftest import detector_config

    entered, release = threading.Event(), threading.Event()
    real_obtain = EngineCache.obtain
    calls = []

    def obtain(self, *args, **kwargs):  # holds the first build (the first model's) only
        calls.append(args[1])
        if len(calls) == 1:
            entered.set()
            assert release.wait(60)
        return real_obtain(self, *args, **kwargs)

    monkeypatch.setattr(EngineCache, "obtain", obtain)
    sources = '[[sources]]\nid = "cam"\nuri = "synthetic:160x120@20"\n'
    engine = f'backend = "onnxruntime"\non_missing_engine = "fallback"\ncache_dir = "{tmp_path / "cache"}"\nmax_batch = 2'
    path = tmp_path / "daemon.toml"
    path.write_text(detector_config(sources, free_port, engine=engine, wait_for_subscribers="0")
                    + f'[control]\nendpoint = "ipc://{tmp_path}/control.ipc"\n')
    daemon = Daemon(load_config(path), path)
    exit_code = []
    runner = threading.Thread(target=lambda: exit_code.append(daemon.run()), name="daemon-under-test")
    runner.start()
    try:
        assert entered.wait(60), "the background build never started"
        first = daemon._provider
        path.write_text(path.read_text().replace("yolov3_tiny_416.onnx", "yolov3_tiny_320.onnx"))
        daemon.request_reload()
        assert poll(lambda: daemon.reload_status["count"] == 1, 60)
        assert daemon.reload_status["count"] == 1 and daemon.reload_status["last_error"] is None
        assert poll(lambda: input_width(daemon) == 320, 120), "the reloaded model never served"
        assert first in daemon._retired_providers
        release.set()
        first._thread.join(60)
        assert not first._thread.is_alive()
        served_batches = daemon._scheduler.stats.batches
        assert poll(lambda: daemon._scheduler.stats.batches >= served_batches + 5, 60)
        assert input_width(daemon) == 320, "the first model's engine came back over the reloaded one"
        assert first.status()["state"] != "switching"
    finally:
        release.set()
        daemon.request_stop()
        runner.join(60)
    assert exit_code == [0]
