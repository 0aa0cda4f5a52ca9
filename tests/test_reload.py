"""SIGHUP: re-read the config without a restart (real daemon subprocess, real signals and sockets)."""

from __future__ import annotations

import signal
import time

from daemon.client import ResultSubscriber
from daemon.security import AUTHORIZED_DIR, generate_keys

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


def curve_config(port: int, keys_dir, extra_security: str = "") -> str:
    return config_with(synthetic_sources("cam"), port) + (
        f"\n[security]\n{extra_security}\n[security.curve]\nenabled = true\n"
        f'server_secret_key = "{keys_dir / "server.key_secret"}"\nauthorized_clients = "{keys_dir / AUTHORIZED_DIR}"\n'
    )


def refused(subscriber: ResultSubscriber, timeout: float = 20.0) -> str:
    """Wait (on the handshake events, with a deadline) until the daemon refuses ``subscriber``; it must
    receive nothing meanwhile."""
    deadline = time.monotonic() + timeout
    while subscriber.handshake_failure is None:
        assert time.monotonic() < deadline, "the daemon never refused this client's handshake"
        assert subscriber.receive(timeout=0.5) is None, "a refused client received a message"
    return subscriber.handshake_failure


def reloaded(subscriber, count: int, daemon) -> None:
    collect(subscriber, lambda ms: any(m.type == "heartbeat" and m.header["reload"]["count"] >= count for m in ms), timeout=30, daemon=daemon)


def test_sighup_rereads_the_authorised_client_keys(start_daemon, free_port, tmp_path):
    """Issue 11, finding 5: remove a client's key file and reload, and that client's new connections are
    refused; put it back and reload, and it is admitted again. A connection made before the reload keeps
    going (ZeroMQ authenticates at the handshake). Other [security] changes are refused with a warning."""
    keys = generate_keys(tmp_path / "keys", ["viewer", "recorder"])
    keys_dir = tmp_path / "keys"
    endpoint = f"tcp://127.0.0.1:{free_port}"

    def subscriber(name: str) -> ResultSubscriber:
        return ResultSubscriber(endpoint, ["cam"], curve_server_key=keys["server"].public, curve_client_keys=keys[name].secret)

    with subscriber("viewer") as viewer, subscriber("recorder") as connected_before:
        daemon = start_daemon(curve_config(free_port, keys_dir), name="live.toml")
        collect(viewer, lambda ms: len(results_of(ms, "cam")) >= 3, timeout=60, daemon=daemon)
        collect(connected_before, lambda ms: len(results_of(ms, "cam")) >= 1, timeout=30, daemon=daemon)

        revoked_key = keys_dir / AUTHORIZED_DIR / "recorder.key"
        kept = revoked_key.read_bytes()
        revoked_key.unlink()
        daemon.process.send_signal(signal.SIGHUP)
        reloaded(viewer, 1, daemon)
        with subscriber("recorder") as revoked, subscriber("viewer") as fresh_viewer:
            assert "refused this client's key" in refused(revoked)
            collect(fresh_viewer, lambda ms: len(results_of(ms, "cam")) >= 3, timeout=30, daemon=daemon)
            assert revoked.receive(timeout=0.2) is None
        collect(connected_before, lambda ms: len(results_of(ms, "cam")) >= 3, timeout=30, daemon=daemon)

        revoked_key.write_bytes(kept)  # re-admitted, and a [security] change that needs a restart
        (tmp_path / "live.toml").write_text(curve_config(free_port, keys_dir, extra_security="ipc_mode = 0o600"))
        daemon.process.send_signal(signal.SIGHUP)
        reloaded(viewer, 2, daemon)
        with subscriber("recorder") as readmitted:
            collect(readmitted, lambda ms: len(results_of(ms, "cam")) >= 1, timeout=30, daemon=daemon)
            assert readmitted.handshake_failure is None
        daemon.terminate()
        collect(viewer, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert "1 authorised client key(s) in" in daemon.stderr and "0 added, 1 removed" in daemon.stderr
    assert "reload: [security] changes take effect at the next restart" in daemon.stderr
