"""SIGHUP: re-read the config without a restart (real daemon subprocess, real signals and sockets)."""

from __future__ import annotations

import signal

from daemon.client import ResultSubscriber

from .conftest import all_ended, collect, detector_config


def synthetic_sources(*ids: str) -> str:
    return "".join(f'[[sources]]\nid = "{i}"\nuri = "synthetic:320x240@10"\n' for i in ids)


def config_with(sources: str, port: int) -> str:
    return detector_config(sources, port, publisher="") + "\n[daemon]\nexit_when_sources_end = false\n"


def results_of(messages, source):
    return [m for m in messages if m.type == "result" and m.source_id == source]


def test_sighup_adds_removes_and_restarts_sources_without_a_restart(start_daemon, free_port, tmp_path):
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config_with(synthetic_sources("keep", "drop"), free_port), name="live.toml")
        collect(subscriber, lambda ms: len(results_of(ms, "keep")) >= 3 and len(results_of(ms, "drop")) >= 3, timeout=60, daemon=daemon)
        instance = None
        (tmp_path / "live.toml").write_text(config_with(synthetic_sources("keep", "new"), free_port))
        daemon.process.send_signal(signal.SIGHUP)
        messages = collect(
            subscriber,
            lambda ms: any(m.type == "eos" and m.source_id == "drop" for m in ms) and len(results_of(ms, "new")) >= 3,
            timeout=60,
            daemon=daemon,
        )
        (eos,) = [m for m in messages if m.type == "eos"]
        assert eos.header["reason"] == "removed"
        instance = {m.header["instance_id"] for m in messages}
        assert len(instance) == 1, "the same daemon instance serves before and after the reload"
        assert len(results_of(messages, "keep")) >= 3, "an unchanged source keeps running through the reload"
        heartbeat = collect(subscriber, lambda ms: any(m.type == "heartbeat" for m in ms), timeout=30, daemon=daemon)[-1]
        assert heartbeat.header["reload"] == {**heartbeat.header["reload"], "count": 1, "last_error": None}
        daemon.terminate()
        collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert "reload: removing source drop" in daemon.stderr and "reload: adding source new" in daemon.stderr


def test_sighup_with_an_invalid_config_keeps_running_on_the_old_one(start_daemon, free_port, tmp_path):
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config_with(synthetic_sources("cam"), free_port), name="live.toml")
        collect(subscriber, lambda ms: len(results_of(ms, "cam")) >= 3, timeout=60, daemon=daemon)
        (tmp_path / "live.toml").write_text(config_with(synthetic_sources("cam"), free_port).replace("[engine]", "[engine]\nwarmup = 'sometimes'"))
        daemon.process.send_signal(signal.SIGHUP)
        messages = collect(
            subscriber,
            lambda ms: any(m.type == "heartbeat" and m.header["reload"]["last_error"] for m in ms),
            timeout=30,
            daemon=daemon,
        )
        error = [m for m in messages if m.type == "heartbeat"][-1].header["reload"]["last_error"]
        assert "engine.warmup" in error
        after = collect(subscriber, lambda ms: len(results_of(ms, "cam")) >= 5, timeout=30, daemon=daemon)
        assert results_of(after, "cam"), "still serving the old config"
        daemon.terminate()
        collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert "reload rejected, still running the previous config" in daemon.stderr
