"""sd_notify (daemon/notify.py) against a real unix datagram socket bound by the test, the way systemd
binds $NOTIFY_SOCKET: both the pure-Python protocol and systemd-python's daemon.notify.

systemd-python is an optional extra (built from source: apt-get install libsystemd-dev pkg-config).
Without it its tests skip with that reason, or fail under TRTSTREAM_REQUIRE_EXTRAS=1 (scripts/test).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from daemon.notify import Notifier, extending_timeout, monotonic_usec, status_line

from .conftest import missing



class NotifySocket:
    """What systemd does: bind a SOCK_DGRAM unix socket and read state datagrams from it."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        # what goes into $NOTIFY_SOCKET: '@' stands for the abstract namespace's leading NUL
        self.env_value = "@" + address[1:] if address.startswith("\0") else address

    def receive(self, timeout: float = 5.0) -> list[str]:
        """The next datagram's lines; fails after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no notification within {timeout}s") from None
        return data.decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    address = str(tmp_path / "notify.sock") if request.param == "path" else f"\0trtstream-test-{uuid.uuid4().hex}"
    listener = NotifySocket(address)
    yield listener
    listener.close()


def test_pure_python_protocol(notify_socket):
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    assert notifier.backend == "socket" and notifier.enabled
    assert notifier.ready("serving 2 sources")
    assert notify_socket.receive() == ["READY=1", "STATUS=serving 2 sources"]
    assert notifier.status("line one\nline two")
    assert notify_socket.receive() == ["STATUS=line one line two"], "a newline must not start a new assignment"
    assert notifier.watchdog()
    assert notify_socket.receive() == ["WATCHDOG=1"]
    before = monotonic_usec()
    assert notifier.reloading()
    reloading, stamp = notify_socket.receive()
    assert reloading == "RELOADING=1" and stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.split("=")[1]) <= monotonic_usec()
    assert notifier.extend_timeout(90)
    assert notify_socket.receive() == ["EXTEND_TIMEOUT_USEC=90000000"]
    assert notifier.stopping("draining")
    assert notify_socket.receive() == ["STOPPING=1", "STATUS=draining"]
    notifier.close()


def test_systemd_python_path(notify_socket, monkeypatch):
    try:
        from systemd import daemon  # noqa: F401
    except ImportError as exc:
        message = f"needs systemd-python ({exc}): apt-get install -y libsystemd-dev pkg-config; pip install systemd-python"
        missing(message)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env_value)
    notifier = Notifier()
    assert notifier.backend == "systemd-python"
    assert notifier.ready("engine loaded")
    assert notify_socket.receive() == ["READY=1", "STATUS=engine loaded"]
    assert notifier.watchdog("12.5 fps")
    assert notify_socket.receive() == ["WATCHDOG=1", "STATUS=12.5 fps"]
    assert notifier.reloading()
    assert notify_socket.receive()[0] == "RELOADING=1"


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier({})
    assert notifier.backend == "none" and not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()
    assert notifier.watchdog_interval() is None


def test_a_vanished_manager_is_logged_once_and_never_raises(tmp_path, caplog):
    path = tmp_path / "gone.sock"
    listener = NotifySocket(str(path))
    listener.close()
    path.unlink()
    notifier = Notifier({"NOTIFY_SOCKET": str(path)}, use_systemd_python=False)
    with caplog.at_level(logging.WARNING, logger="trtstream.notify"):
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    assert len([r for r in caplog.records if "sd_notify failed" in r.message]) == 1


def test_not_a_unix_socket_disables_the_pure_python_path():
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}, use_systemd_python=False)
    assert notifier.backend == "none"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert Notifier(env).watchdog_interval() == expected


def test_extending_timeout_repeats_until_the_block_ends(notify_socket):
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    with extending_timeout(notifier, step_s=0.2):
        assert notify_socket.receive() == ["EXTEND_TIMEOUT_USEC=200000"]
        assert notify_socket.receive() == ["EXTEND_TIMEOUT_USEC=200000"], "the extension must be renewed"
    notify_socket.pending()  # one may have been in flight as the block ended
    assert notify_socket.pending() == [], "no extension after the block (its thread has been joined)"


def test_extending_timeout_stops_at_its_limit(notify_socket):
    """A hung build must not be extended forever: past limit_s the extensions stop, block or no block."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value}, use_systemd_python=False)
    start = time.monotonic()
    received = 0
    with extending_timeout(notifier, step_s=0.1, limit_s=0.25):
        deadline = start + 5.0
        notify_socket.sock.settimeout(0.3)  # quiet for longer than the renewal period = stopped
        while True:
            assert time.monotonic() < deadline, "extensions never stopped"
            try:
                notify_socket.sock.recv(4096)
                received += 1
            except TimeoutError:
                break
        quiet_at = time.monotonic()
    assert received >= 2 and quiet_at - start >= 0.25


def test_status_line_from_a_heartbeat():
    heartbeat = {
        "backend": {"name": "tensorrt", "device": "NVIDIA Orin"},
        "sources": [{"id": "cam1", "state": "running", "fps": 25.0}, {"id": "door", "state": "backoff", "fps": 0}],
    }
    assert status_line(heartbeat) == "tensorrt on NVIDIA Orin: 25.0 fps, 2 source(s): cam1 running, door backoff"
