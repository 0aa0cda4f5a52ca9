"""Finding 1 of issue 11: file-descriptor exhaustion must not crash the daemon.

With the soft RLIMIT_NOFILE at 1024 (what a unit without ``LimitNOFILE=`` gets), idle TCP connections
to the publisher port filled the table and the next ``trtstream status`` made libzmq's ipc listener
abort (``Too many open files (src/ipc_listener.cpp:297)``). The daemon now raises its soft limit to
the hard one at start (daemon/limits.py) and the units set ``LimitNOFILE=``; the metrics endpoint drops
connections that do not finish their request and caps how many it serves at once.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.client import ResultSubscriber

from .conftest import REPO, detector_config

SOFT, HARD = 256, 4096
IDLE_CONNECTIONS = 300


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' line in /proc/{pid}/limits")


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def _wait_for_heartbeat(subscriber: ResultSubscriber, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited ({process.returncode}) before serving:\n{process.communicate()[1][-3000:]}")
        message = subscriber.receive(timeout=0.5)
        if message is not None and message.type == "heartbeat":
            return
    raise AssertionError(f"no heartbeat within {timeout}s")


def test_idle_connections_and_status_do_not_exhaust_descriptors(tmp_path, free_port):
    config = tmp_path / "daemon.toml"
    config.write_text(
        detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:64x48@2"\n', free_port, wait_for_subscribers="0")
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", str(config), "--log-level", "DEBUG"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_low_limit,
    )
    connections: list[socket.socket] = []
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            _wait_for_heartbeat(subscriber, daemon, timeout=120)
        for _ in range(IDLE_CONNECTIONS):  # idle: no ZMTP greeting, as an attacker would leave them
            connections.append(socket.create_connection(("127.0.0.1", free_port), timeout=5))
        status = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--compact"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert daemon.poll() is None, f"the daemon died ({daemon.returncode})"
        assert status.returncode == 0, f"status failed ({status.returncode}): {status.stderr}"
        assert '"sources"' in status.stdout
        assert daemon.poll() is None, "the daemon must survive"
        assert soft_nofile(daemon.pid) == HARD, "the daemon raised its soft limit to the hard one"
    finally:
        for connection in connections:
            connection.close()
        if daemon.poll() is None:
            daemon.terminate()
        try:
            _, stderr = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, stderr = daemon.communicate()
    assert daemon.returncode == 0, stderr[-3000:]
    assert f"open files: soft limit raised from {SOFT} to {HARD}" in stderr


def test_raise_nofile_limit_in_process():
    """The helper itself: soft goes to hard (or stays when already there) and it reports both."""
    from daemon.limits import raise_nofile_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        before, after, limit = raise_nofile_limit()
        assert before == min(soft, 512)
        assert after == resource.getrlimit(resource.RLIMIT_NOFILE)[0] and limit == hard
        assert after == hard or (hard == resource.RLIM_INFINITY and after > before)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_metrics_drops_a_half_sent_request_and_caps_connections():
    """A connection that never finishes its request is closed by the server after its deadline, and
    connections beyond the cap are closed at once, so neither can pile up descriptors."""
    from daemon.metrics import Metrics, MetricsInputs

    metrics = Metrics(MetricsInputs(sources=dict), process_metrics=False)
    metrics.request_timeout_s = 1.0
    metrics.max_connections = 4
    port = metrics.start(0)
    try:
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the request never ends
        started = time.monotonic()
        assert stalled.recv(1024) == b"", "the server closes a stalled connection"
        assert time.monotonic() - started < 8
        stalled.close()

        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        for sock in held:
            sock.sendall(b"G")  # half a request each: every slot busy
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert extra.recv(1024) == b"", "a connection over the cap is closed at once"
        extra.close()
        for sock in held:
            sock.close()

        # The closed connections free their slots once their handler threads see EOF: poll, with a deadline.
        deadline, reply = time.monotonic() + 10, b""
        while time.monotonic() < deadline and not reply.startswith(b"HTTP/1.0 200"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as ok:
                ok.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := ok.recv(65536):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.0 200") and b"trtstream_build_info" in reply
    finally:
        metrics.stop()


@pytest.mark.parametrize("unit", ["trtstream.service", "trtstream@.service"])
def test_units_set_limit_nofile(unit):
    lines = [line.strip() for line in (REPO / "systemd" / unit).read_text().splitlines()]
    assert "LimitNOFILE=65536" in lines
