"""The control socket (daemon/control.py) with real ZeroMQ ipc sockets in temporary directories."""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import time

import pytest
import zmq

from daemon.control import (
    ControlServer,
    ControlUnavailable,
    LatestResults,
    add_status_command,
    default_control_endpoint,
    query,
)
from daemon.errors import UserError

HEARTBEAT = {"uptime_s": 12.5, "sources": [{"id": "cam1", "state": "running", "fps": 25.0}]}


@pytest.fixture
def latest():
    return LatestResults()


@pytest.fixture
def server(tmp_path, latest):
    servers = []

    def start(mode: int = 0o660, heartbeat=lambda: HEARTBEAT, endpoint: str | None = None) -> ControlServer:
        srv = ControlServer(endpoint or f"ipc://{tmp_path}/run/control.ipc", heartbeat, latest, mode=mode)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_socket_file_mode_and_status(server, tmp_path, mode):
    srv = server(mode)
    path = tmp_path / "run" / "control.ipc"
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert query(srv.endpoint, {"cmd": "status"}) == {"ok": True, "cmd": "status", "result": HEARTBEAT}


def test_latest_result_per_source(server, latest):
    srv = server()
    latest.update("cam1", {"source_id": "cam1", "seq": 1})
    latest.update("cam1", {"source_id": "cam1", "seq": 2})
    latest.update("door", {"source_id": "door", "seq": 7})
    assert query(srv.endpoint, {"cmd": "latest", "source": "cam1"})["result"] == {"source_id": "cam1", "seq": 2}
    everything = query(srv.endpoint, {"cmd": "latest"})["result"]
    assert everything == {"cam1": {"source_id": "cam1", "seq": 2}, "door": {"source_id": "door", "seq": 7}}
    assert query(srv.endpoint, {"cmd": "latest", "source": "yard"}) == {"ok": False, "error": "no result yet for source 'yard'"}


def test_bad_requests_get_an_error_reply_and_the_server_keeps_serving(server):
    srv = server()
    assert query(srv.endpoint, {"cmd": "reboot"}) == {"ok": False, "error": "unknown command 'reboot'; known: latest, status"}
    assert query(srv.endpoint, {"command": "status"})["ok"] is False
    context = zmq.Context.instance()
    raw = context.socket(zmq.REQ)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        raw.connect(srv.endpoint)
        raw.send(b"\xff not json")
        assert json.loads(raw.recv())["error"].startswith("request is not JSON")
        raw.send_multipart([b'{"cmd": "status"}', b"extra"])
        assert json.loads(raw.recv()) == {"ok": False, "error": "send one JSON object per request"}
    finally:
        raw.close()
    assert query(srv.endpoint, {"cmd": "status"})["ok"] is True


def test_a_failing_heartbeat_is_an_error_reply(server):
    def broken():
        raise RuntimeError("cannot read rtsp://admin:hunter2@cam/1")

    srv = server(heartbeat=broken)
    reply = query(srv.endpoint, {"cmd": "status"})
    assert reply["ok"] is False and "hunter2" not in reply["error"] and "admin:***@" in reply["error"]
    assert query(srv.endpoint, {"cmd": "latest"})["ok"] is True


def test_stop_is_prompt_and_removes_the_socket(server, tmp_path):
    srv = server()
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 2.0
    assert not (tmp_path / "run" / "control.ipc").exists()


def test_query_without_a_daemon_fails_at_once_with_one_line(tmp_path):
    start = time.monotonic()
    with pytest.raises(ControlUnavailable, match=r"^trtstream is not running: no control socket at .*control\.ipc$"):
        query(f"ipc://{tmp_path}/control.ipc", {"cmd": "status"}, timeout=30)
    assert time.monotonic() - start < 1.0, "a missing socket must not wait for the timeout"


def stale_socket(path) -> None:
    """A socket file nobody listens on, as a crashed daemon leaves behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_query_a_stale_socket_times_out_without_hanging(tmp_path):
    path = tmp_path / "control.ipc"
    stale_socket(path)
    start = time.monotonic()
    with pytest.raises(ControlUnavailable, match="no answer from .* within 0.3s: trtstream is not running or not responding"):
        query(f"ipc://{path}", {"cmd": "status"}, timeout=0.3)
    assert time.monotonic() - start < 2.0


def test_bind_replaces_a_stale_socket_but_not_a_live_one(server, tmp_path, latest):
    path = tmp_path / "run" / "control.ipc"
    path.parent.mkdir()
    stale_socket(path)
    srv = server()
    assert query(srv.endpoint, {"cmd": "status"})["ok"]
    second = ControlServer(srv.endpoint, lambda: {}, latest)
    with pytest.raises(UserError, match="in use by another running trtstream"):
        second.start()
    assert query(srv.endpoint, {"cmd": "status"})["ok"], "the running daemon keeps its socket"


@pytest.mark.parametrize(
    ("endpoint", "allow_remote", "error"),
    [
        ("tcp://0.0.0.0:5599", False, "non-loopback"),
        ("tcp://192.0.2.1:5599", False, "non-loopback"),
        ("tcp://*:5599", False, "non-loopback"),
        ("ipc://@trtstream-control", False, "abstract socket"),
        ("inproc://control", False, "must be ipc"),
        ("tcp://127.0.0.1:5599", False, None),
        ("tcp://[::1]:5599", False, None),
        ("tcp://0.0.0.0:5599", True, None),
    ],
)
def test_endpoint_policy(endpoint, allow_remote, error, latest):
    if error:
        with pytest.raises(UserError, match=error):
            ControlServer(endpoint, dict, latest, allow_remote=allow_remote)
    else:
        ControlServer(endpoint, dict, latest, allow_remote=allow_remote)  # accepted (not started)


def test_mode_must_be_0600_or_0660(latest, tmp_path):
    with pytest.raises(UserError, match="0600 or 0660"):
        ControlServer(f"ipc://{tmp_path}/c.ipc", dict, latest, mode=0o666)


def test_tcp_loopback_control(latest, free_port):
    srv = ControlServer(f"tcp://127.0.0.1:{free_port}", lambda: HEARTBEAT, latest)
    srv.start()
    try:
        assert query(srv.endpoint, {"cmd": "status"})["result"] == HEARTBEAT
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("env", "instance", "run_dir_exists", "expected"),
    [
        ({"RUNTIME_DIRECTORY": "/run/trtstream/gpu0"}, None, True, "ipc:///run/trtstream/gpu0/control.ipc"),
        ({"RUNTIME_DIRECTORY": "/run/a:/run/b"}, None, False, "ipc:///run/a/control.ipc"),
        ({}, "gpu1", False, "ipc://{run}/gpu1/control.ipc"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, None, True, "ipc://{run}/control.ipc"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, None, False, "ipc:///run/user/1000/trtstream/control.ipc"),
        ({}, None, False, f"ipc:///tmp/trtstream-{os.getuid()}/control.ipc"),
    ],
)
def test_default_endpoint(env, instance, run_dir_exists, expected, tmp_path):
    run_dir = tmp_path / "run-trtstream"
    if run_dir_exists:
        run_dir.mkdir()
    assert default_control_endpoint(env, instance, run_dir=run_dir) == expected.format(run=run_dir)


def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtstream")
    add_status_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_status_command(server, latest, capsys):
    srv = server()
    latest.update("cam1", {"seq": 9})
    args = status_parser().parse_args(["status", "--endpoint", srv.endpoint, "--compact"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out) == HEARTBEAT
    args = status_parser().parse_args(["status", "--endpoint", srv.endpoint, "--latest", "cam1"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out) == {"seq": 9}
    args = status_parser().parse_args(["status", "--endpoint", srv.endpoint, "--latest", "nope"])
    with pytest.raises(UserError, match="no result yet for source 'nope'"):
        args.handler(args)


def test_status_command_without_a_daemon(tmp_path):
    args = status_parser().parse_args(["status", "--endpoint", f"ipc://{tmp_path}/none.ipc"])
    with pytest.raises(ControlUnavailable, match="not running") as caught:
        args.handler(args)
    assert caught.value.exit_code == 1 and "\n" not in str(caught.value)
