"""The publisher against hostile or careless local peers (issue 11, findings 2 and 13), with real parts:
a real daemon subprocess, a real ``ResultSubscriber``, and a raw TCP client that speaks just enough
ZMTP 3 (greeting, READY as a SUB) to be accepted by the publisher and then floods it with frames that
are not subscriptions."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from daemon.client import ResultSubscriber
from daemon.config import PublisherConfig
from daemon.publisher import Publisher

from .conftest import detector_config

MiB = 1024 * 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _settled_rss(pid: int, subscriber: ResultSubscriber, timeout: float = 12.0) -> int:
    """The daemon's RSS once it stopped growing (under 2 MiB in 1 s), reading results meanwhile."""
    deadline = time.monotonic() + timeout
    previous, next_sample = _rss(pid), time.monotonic() + 1.0
    while time.monotonic() < deadline:
        subscriber.receive(timeout=0.1)
        if time.monotonic() >= next_sample:
            current = _rss(pid)
            if abs(current - previous) < 2 * MiB:
                return current
            previous, next_sample = current, time.monotonic() + 1.0
    raise AssertionError(f"the daemon's RSS did not settle within {timeout}s ({previous / MiB:.0f} MiB)")


def _zmtp_sub_handshake(port: int) -> socket.socket:
    """A TCP connection that has passed the ZMTP 3.0 NULL handshake as a SUB socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    sock.sendall(greeting)
    received = b""
    while len(received) < 64:
        chunk = sock.recv(64 - len(received))
        assert chunk, "publisher closed the connection during the greeting"
        received += chunk
    assert received[:1] == b"\xff" and received[10:11] == b"\x03", received
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    sock.sendall(bytes([0x04, len(body)]) + body)  # a short command frame
    return sock


def _flood(port: int, seconds: float, sent: list[int]) -> None:
    """Send non-subscription frames (first byte neither 0 nor 1) as fast as the publisher takes them,
    reconnecting when it drops us; ``sent`` gets the byte count."""
    frame = bytes([0x00, 200]) + b"x" * 200  # a short, final message frame
    chunk = frame * 5000  # ~1 MB per sendall
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        try:
            sock = _zmtp_sub_handshake(port)
        except (OSError, AssertionError):
            time.sleep(0.05)
            continue
        try:
            sock.settimeout(0.5)
            while time.monotonic() < deadline:
                try:
                    sock.sendall(chunk)
                    total += len(chunk)
                except socket.timeout:
                    continue
        except OSError:
            pass  # dropped by the publisher: come back
        finally:
            sock.close()
    sent.append(total)


def test_flooding_peer_neither_stalls_results_nor_grows_memory(start_daemon, free_port):
    """Finding 2: while one unauthenticated peer floods the publisher for 3 s, a legitimate subscriber
    keeps receiving (no gap over 5 s) and the daemon's RSS grows by less than 100 MiB. The default
    publisher (``wait_for_subscribers = 0``) is a plain PUB, which drops such frames as they come."""
    config = detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:64x48@10"\n', free_port, wait_for_subscribers="0")
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        deadline = time.monotonic() + 25
        while True:  # the daemon serves results before the attack starts
            assert time.monotonic() < deadline, "no result from the daemon"
            assert daemon.process.poll() is None, daemon.wait()
            message = subscriber.receive(timeout=0.5)
            if message is not None and message.type == "result":
                break
        rss_before = _settled_rss(daemon.process.pid, subscriber)  # past the inference warm-up's growth
        sent: list[int] = []
        attacker = threading.Thread(target=_flood, args=(free_port, 3.0, sent), daemon=True)
        attacker.start()
        peak = rss_before
        last = time.monotonic()
        longest_gap = 0.0
        watch_until = time.monotonic() + 7.0  # the 3 s flood and 4 s after it
        while time.monotonic() < watch_until:
            peak = max(peak, _rss(daemon.process.pid))
            message = subscriber.receive(timeout=0.1)
            now = time.monotonic()
            if message is not None and message.type == "result":
                longest_gap = max(longest_gap, now - last)
                last = now
        longest_gap = max(longest_gap, time.monotonic() - last)
        attacker.join(10)
        assert sent and sent[0] > MiB, f"the attacker sent only {sent} bytes: the test did not attack"
        assert daemon.process.poll() is None
        assert longest_gap < 5.0, f"no result for {longest_gap:.1f}s while a peer flooded the publisher"
        grown = (peak - rss_before) / MiB
        assert grown < 100, f"RSS grew by {grown:.0f} MiB ({rss_before / MiB:.0f} -> {peak / MiB:.0f}) under the flood"


def test_second_daemon_refuses_a_publisher_ipc_path_in_use(start_daemon, free_port, tmp_path):
    """Finding 13: a second daemon on the same ipc publisher endpoint exits non-zero with one line naming
    it, and the first keeps publishing there."""
    endpoint = f"ipc://{tmp_path}/results.ipc"
    config = detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:64x48@10"\n', free_port, wait_for_subscribers="0")
    config = config.replace(f'endpoints = ["tcp://127.0.0.1:{free_port}"]', f'endpoints = ["{endpoint}"]')
    with ResultSubscriber(endpoint) as subscriber:
        first = start_daemon(config, name="first.toml")
        deadline = time.monotonic() + 25
        while (message := subscriber.receive(timeout=0.5)) is None or message.type != "result":
            assert time.monotonic() < deadline, "no result from the first daemon"
            assert first.process.poll() is None, first.wait()
        first_instance = message.header["instance_id"]
        second = start_daemon(config, name="second.toml", env={"RUNTIME_DIRECTORY": str(tmp_path / "run2")})
        code = second.wait(15)
        assert code != 0, f"the second daemon took over {endpoint}:\n{second.stderr[-2000:]}"
        lines = [line for line in second.stderr.splitlines() if endpoint in line]
        assert len(lines) == 1 and "in use" in lines[0], second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    with ResultSubscriber(endpoint) as late:  # a new connection to the path reaches the first daemon
        deadline = time.monotonic() + 10
        while (message := late.receive(timeout=0.5)) is None or message.type != "result":
            assert time.monotonic() < deadline, "the first daemon no longer publishes on its ipc endpoint"
        assert message.header["instance_id"] == first_instance
    assert first.process.poll() is None


def test_a_stale_publisher_socket_file_is_replaced(tmp_path):
    """Nobody listening on the ipc path (a daemon that was killed): the publisher binds there as before."""
    path = tmp_path / "results.ipc"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody accepts on it
    publisher = Publisher(PublisherConfig(endpoints=[f"ipc://{path}"], linger_ms=0), "0" * 32, {}, {}, lambda: {})
    publisher.start()
    try:
        with ResultSubscriber(f"ipc://{path}") as subscriber:
            deadline = time.monotonic() + 10
            while (message := subscriber.receive(timeout=0.5)) is None or message.type != "heartbeat":
                assert time.monotonic() < deadline, "no heartbeat on the replaced socket"
    finally:
        publisher.stop()
