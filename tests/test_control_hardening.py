"""The control socket against hostile clients and hostile file systems (issue 11, findings 7, 8 and 14b).

Real ZeroMQ sockets, real ``python -m daemon run`` and ``python -m daemon status`` subprocesses. A
"directory another user made" is made for real when the tests run as root (chown to nobody); as
another user those cases are skipped, the world-writable ones still run. Nothing waits on a sleep: a
dropped connection is seen on the socket monitor, a daemon's readiness on its heartbeat.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from daemon.client import ResultSubscriber
from daemon.control import MAX_REQUEST_BYTES, ControlServer, LatestResults, query

from .conftest import REPO, collect, detector_config
from .test_control import HEARTBEAT, latest, server  # noqa: F401 (latest, server: fixtures)

NOBODY = 65534
IS_ROOT = os.geteuid() == 0

HOSTILE_REQUESTS = {
    "deep list": b"[" * 5000,
    "deep object": b'{"a": ' * 5000,
    "closed deep list": b"[" * 5000 + b"]" * 5000,
    "long integer": b"1" * 5000,
    "long integer in a request": b'{"cmd": "latest", "source": ' + b"9" * 5000 + b"}",
    "not an object": b'["status"]',
    "empty": b"",
}


def raw_request(endpoint: str, payload: bytes, timeout_ms: int = 5000) -> dict:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    try:
        sock.connect(endpoint)
        sock.send(payload)
        return json.loads(sock.recv())
    finally:
        sock.close()


def cli(*args: str, env: dict | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "daemon", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("trtstream: error: "), stderr
    return lines[0]


# -- finding 7: one request must not end the control thread ---------------------------------------
@pytest.mark.parametrize("name", list(HOSTILE_REQUESTS))
def test_a_hostile_request_gets_an_error_reply_and_the_socket_stays(server, tmp_path, name):
    srv = server()
    reply = raw_request(srv.endpoint, HOSTILE_REQUESTS[name])
    assert reply["ok"] is False and reply["error"], reply
    assert query(srv.endpoint, {"cmd": "status"}) == {"ok": True, "cmd": "status", "result": HEARTBEAT}
    assert stat.S_ISSOCK((tmp_path / "run" / "control.ipc").stat().st_mode)


def test_an_oversized_request_is_dropped_and_the_server_keeps_serving(server):
    srv = server()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(srv.endpoint)
        sock.send(b" " * (MAX_REQUEST_BYTES + 1))
        events = []
        while zmq.EVENT_DISCONNECTED not in events:
            assert monitor.poll(5000), f"the server did not drop the oversized request's connection (events {events})"
            events.append(recv_monitor_message(monitor)["event"])
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
    assert query(srv.endpoint, {"cmd": "status"})["ok"] is True


def test_a_reply_that_cannot_be_encoded_is_an_error_reply(server):
    looped: dict = {}
    looped["self"] = looped
    srv = server(heartbeat=lambda: looped)
    assert query(srv.endpoint, {"cmd": "status"}) == {"ok": False, "error": "internal error: ValueError"}
    assert query(srv.endpoint, {"cmd": "latest"})["ok"] is True


def test_the_daemon_answers_status_after_hostile_requests(start_daemon, free_port, tmp_path):
    """The finding as reported: after these requests `trtstream status` said "not running"."""
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:160x120@10"\n', free_port)
                              + "\n[daemon]\nexit_when_sources_end = false\n")
        collect(subscriber, lambda ms: any(m.type == "heartbeat" and m.header["sources"] for m in ms), timeout=60, daemon=daemon)
        endpoint = f"ipc://{tmp_path / 'run' / 'control.ipc'}"  # the fixture's RUNTIME_DIRECTORY
        for payload in HOSTILE_REQUESTS.values():
            assert raw_request(endpoint, payload)["ok"] is False
        status = cli("status", "--endpoint", endpoint, "--compact")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["sources"][0]["id"] == "cam"
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.stderr
    assert "control socket thread crashed" not in daemon.stderr and "Traceback" not in daemon.stderr


# -- finding 8: a socket directory someone else made is never used --------------------------------
@pytest.fixture
def shared_tmp(tmp_path):
    """A stand-in for /tmp: world-writable and sticky, where anyone can create trtstream-UID first."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def plant(shared, how: str):
    """What another local user leaves at ``shared/trtstream-UID`` before the daemon starts."""
    planted = shared / f"trtstream-{os.getuid()}"
    if how == "world-writable":
        planted.mkdir()
        planted.chmod(0o777)
        if IS_ROOT:
            os.chown(planted, NOBODY, NOBODY)
        return planted, "it is writable by group or others (mode 0777)"
    if not IS_ROOT:
        pytest.skip("making a directory owned by another user needs root")
    if how == "owned by another user":
        planted.mkdir()
        planted.chmod(0o755)
        os.chown(planted, NOBODY, NOBODY)
        return planted, f"it belongs to uid {NOBODY}, not to this user"
    target = shared / "attackers-dir"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    planted.symlink_to(target)
    return planted, "it is a symbolic link"


PLANTED = ["world-writable", "owned by another user", "symlink"]


@pytest.mark.parametrize("how", PLANTED)
def test_the_daemon_refuses_a_planted_socket_directory(start_daemon, free_port, shared_tmp, how):
    planted, problem = plant(shared_tmp, how)
    before = sorted(os.listdir(planted))
    config = detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:160x120@10"\n', free_port, wait_for_subscribers="0")
    daemon = start_daemon(config + f'\n[control]\nendpoint = "ipc://{planted}/control.ipc"\n')
    assert daemon.wait(60) == 1, daemon.stderr
    assert f"control: refusing {planted}: {problem}" in daemon.stderr
    assert "Traceback" not in daemon.stderr
    assert sorted(os.listdir(planted)) == before, "nothing was bound in the planted directory"


def test_a_socket_directory_made_under_a_shared_parent_is_private(server, shared_tmp):
    directory = shared_tmp / f"trtstream-{os.getuid()}"
    srv = server(endpoint=f"ipc://{directory}/control.ipc")
    st = os.lstat(directory)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert query(srv.endpoint, {"cmd": "status"})["ok"] is True


@pytest.mark.parametrize("how", PLANTED)
def test_status_does_not_talk_to_a_socket_in_a_planted_directory(shared_tmp, how):
    """The attacker's own REP server answers in the planted directory; `trtstream status` must not print it."""
    planted, problem = plant(shared_tmp, how)
    fake = zmq.Context.instance().socket(zmq.REP)
    fake.setsockopt(zmq.LINGER, 0)
    fake.bind(f"ipc://{planted}/control.ipc")
    answered = False
    try:
        status = subprocess.Popen(
            [sys.executable, "-m", "daemon", "status", "--endpoint", f"ipc://{planted}/control.ipc", "--compact"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        while status.poll() is None:  # serve the attacker's answer until status exits
            if fake.poll(100):
                fake.recv()
                fake.send(json.dumps({"ok": True, "cmd": "status", "result": "attacker"}).encode())
                answered = True
        stdout, stderr = status.communicate(timeout=60)
    finally:
        fake.close()
    assert not answered and "attacker" not in stdout, f"status talked to the planted socket and printed {stdout!r}"
    assert status.returncode == 1
    line = one_error_line(stderr)
    assert f"not using {planted}/control.ipc: {planted}: {problem}" in line


# -- finding 14b: `status --endpoint` on a directory this user cannot enter -----------------------
def test_status_on_an_unreadable_directory_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix = None
    if IS_ROOT:  # root reads every directory: own it by nobody and run without the DAC capabilities
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's file-permission override")
        os.chown(locked, NOBODY, NOBODY)
        locked.chmod(0o700)
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    else:
        locked.chmod(0o000)
    try:
        status = cli("status", "--endpoint", f"ipc://{locked}/control.ipc", prefix=prefix)
    finally:
        locked.chmod(0o700)
    assert status.returncode == 1
    line = one_error_line(status.stderr)
    assert line == f"trtstream: error: cannot use {locked}/control.ipc: permission denied (run as root or join the daemon's group)"
