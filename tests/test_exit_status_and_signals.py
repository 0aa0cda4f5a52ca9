"""What a supervisor sees: the exit status of a daemon whose sources failed, and signals during start-up.

Real daemon subprocesses, real signals, the real YOLOv3-tiny model and real ZeroMQ. Waiting is on the
daemon's own log lines (read on a thread, with a deadline) or on its messages, never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.client import ResultSubscriber
from daemon.netaddr import free_loopback_port
from daemon.cuda import CudaError
from daemon.errors import BackendError, PublisherError, TrtstreamError, UserError
from daemon.service import EXIT_SOURCES_FAILED

from .conftest import REPO, DaemonProcess, all_ended, asset, collect, detector_config
from .slow_builds import slow_to_optimise_model


class StderrLines:
    """A daemon's stderr, waited on line by line with a deadline (DaemonProcess reads it on a thread)."""

    def __init__(self, daemon: DaemonProcess):
        self._daemon = daemon

    def wait_for(self, text: str, timeout: float = 60) -> None:
        self._daemon.wait_for_line(text, timeout)

    def text(self, timeout: float = 30) -> str:
        """Everything, once the daemon has closed its stderr (it exited)."""
        return self._daemon.stderr_when_closed(timeout)


def exit_within(daemon: DaemonProcess, timeout: float) -> int:
    """The exit status; the daemon is killed (and the test fails) if it is still running after ``timeout``."""
    try:
        return daemon.process.wait(timeout)
    except Exception:
        daemon.process.kill()
        raise AssertionError(f"the daemon did not exit within {timeout}s") from None


def handlers_installed(pid: int, signum: int) -> bool:
    """Whether the process catches ``signum`` (SigCgt in /proc): from the first line of ``cmd_run`` on,
    while the default action would still kill it before."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def wait_until_caught(daemon: DaemonProcess, signum: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not handlers_installed(daemon.process.pid, signum):
        assert daemon.process.poll() is None, f"the daemon exited early ({daemon.process.returncode})"
        assert time.monotonic() < deadline, "the daemon never installed its signal handlers"
        time.sleep(0.001)  # polled: the moment is the start of cmd_run, which prints nothing



MISSING = '[[sources]]\nid = "missing"\nuri = "/nonexistent/cam.mp4"\n'
SHORT_FILE = f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 5\n'


def dead_camera() -> str:
    return (
        f'[[sources]]\nid = "dead-camera"\nuri = "rtsp://127.0.0.1:{free_loopback_port()}/live"\n'
        "[sources.reconnect]\ninitial_delay_s = 0.05\nmax_delay_s = 0.1\nmax_attempts = 2\nopen_timeout_s = 2\n"
    )


@pytest.mark.parametrize(
    "sources, expected, failed",
    [
        pytest.param(lambda: MISSING, EXIT_SOURCES_FAILED, {"missing"}, id="only-a-missing-file"),
        pytest.param(lambda: MISSING + dead_camera(), EXIT_SOURCES_FAILED, {"missing", "dead-camera"}, id="two-failing-sources"),
        pytest.param(lambda: MISSING + SHORT_FILE, 0, {"missing"}, id="one-fails-one-ends-normally"),
        pytest.param(lambda: SHORT_FILE, 0, set(), id="a-file-that-ends"),
    ],
)
def test_exit_status_says_whether_every_source_failed(start_daemon, free_port, sources, expected, failed):
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(sources(), free_port))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == expected, daemon.stderr
    ends = {m.source_id: m.header["reason"] for m in messages if m.type == "eos"}
    assert {source for source, reason in ends.items() if reason == "error"} == failed, ends
    if expected == EXIT_SOURCES_FAILED:
        assert f"every source failed ({', '.join(sorted(failed))}); exit status 3" in daemon.stderr
    elif failed:
        assert f"1 of 2 sources failed ({', '.join(sorted(failed))})" in daemon.stderr
    else:
        assert "sources failed" not in daemon.stderr and "every source failed" not in daemon.stderr


def never_started_a_source(stderr: str) -> None:
    assert "source cam: connecting" not in stderr, "a source was started after the stop request"
    assert "received SIGTERM" in stderr and "stop requested" in stderr


def test_sigterm_while_waiting_for_subscribers_exits_at_once_without_starting_a_source(start_daemon, free_port):
    daemon = start_daemon(detector_config(f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\n', free_port))
    lines = StderrLines(daemon)
    lines.wait_for("waiting up to 20s for 1 subscriber(s)")
    signalled = time.monotonic()
    daemon.terminate()
    assert exit_within(daemon, 15) == 0
    assert time.monotonic() - signalled < 5, "the stop waited for the subscriber timeout (20 s)"
    stderr = lines.text()
    assert "stop requested while waiting for subscribers" in stderr
    never_started_a_source(stderr)


def test_sigterm_while_the_model_loads_exits_without_starting_a_source(start_daemon, free_port, tmp_path):
    # 'wait' with an empty cache: the engine is built inside the load (a second or more, not a tenth), so
    # the signal lands in it even on a loaded machine.
    engine = f'max_batch = 4\nbackend = "onnxruntime"\non_missing_engine = "wait"\ncache_dir = "{tmp_path / "cache"}"'
    daemon = start_daemon(detector_config(f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\n', free_port, engine=engine))
    lines = StderrLines(daemon)
    lines.wait_for("no usable cached onnxruntime engine")  # logged inside the load, just before the build
    signalled = time.monotonic()
    daemon.terminate()
    assert exit_within(daemon, 15) == 0
    assert time.monotonic() - signalled < 5
    stderr = lines.text()
    assert ("stop requested while the model loaded" in stderr or "stop requested while the engine was being built" in stderr), (
        "the SIGTERM arrived during the model load"
    )
    never_started_a_source(stderr)


def daemon_children(pid: int) -> set[int]:
    """The processes ``pid`` started (all its threads' children)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children.update(int(c) for c in (task / "children").read_text().split())
    return children


@pytest.mark.parametrize("who", ["daemon", "daemon and build"])
def test_sigterm_during_a_long_engine_build_ends_the_build_and_the_daemon_at_once(start_daemon, free_port, tmp_path, who):
    """Issue 11, finding 12: the build (ONNX Runtime optimising a model whose constant folding takes many
    seconds of real work; a TensorRT build takes minutes) runs in a child process, so a SIGTERM ends it
    and the daemon at once, instead of after the build, and nothing is bound or started afterwards; the
    partial artifact is not left in the cache. "daemon and build": the build's process gets the SIGTERM
    too, first, as with systemd's KillMode=control-group: still a clean stop, not a failed build."""
    model = slow_to_optimise_model(tmp_path / "slow.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    cache = tmp_path / "cache"
    config = f"""
[[sources]]
id = "cam"
uri = "synthetic:64x48@5"
[model]
path = "{model}"
pipeline = "classification"
labels = "{labels}"
[engine]
backend = "onnxruntime"
max_batch = 1
on_missing_engine = "wait"
cache_dir = "{cache}"
[publisher]
endpoints = ["tcp://127.0.0.1:{free_port}"]
[logging]
level = "INFO"
"""
    daemon = start_daemon(config)
    lines = StderrLines(daemon)
    lines.wait_for("no usable cached onnxruntime engine")
    deadline = time.monotonic() + 10  # the build's process starting (an in-process build has none: signal anyway)
    while not (children := daemon_children(daemon.process.pid)) and time.monotonic() < deadline:
        assert daemon.process.poll() is None, "the daemon exited during the build"
        time.sleep(0.01)  # polled with a deadline: a child's start has no event to wait on from here
    signalled = time.monotonic()
    if who == "daemon and build":
        for child in children:
            os.kill(child, signal.SIGTERM)
    daemon.terminate()
    assert exit_within(daemon, 30) == 0
    assert time.monotonic() - signalled < 5, "the stop waited for the build"
    stderr = lines.text()
    assert "stop requested while the engine was being built" in stderr, stderr[-2000:]
    never_started_a_source(stderr)
    assert "serving model" not in stderr
    assert children, "the build ran in the daemon's own process"
    for child in children:
        assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z", "the build outlived the daemon"
    leftovers = [p.name for p in cache.rglob("*") if p.suffix in (".tmp", ".onnx", ".json")]  # not the lock and lease files
    assert leftovers == [], leftovers


def test_sigterm_before_the_daemon_exists_exits_0_without_loading_the_model(start_daemon, free_port):
    daemon = start_daemon(detector_config(f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\n', free_port))
    wait_until_caught(daemon, signal.SIGTERM)
    daemon.terminate()
    assert exit_within(daemon, 15) == 0
    stderr = daemon.stderr_when_closed()
    assert "received SIGTERM during start-up" in stderr, stderr
    assert "stop requested before the model loaded" in stderr
    assert "engine" not in stderr and "source cam" not in stderr, "nothing was loaded or started"


def test_sighup_during_start_up_does_not_kill_the_daemon_and_becomes_a_reload(start_daemon, free_port):
    config = detector_config(
        f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\nloop = true\npace = true\n', free_port
    )
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}", sources=["cam"]) as subscriber:
        daemon = start_daemon(config)
        lines = StderrLines(daemon)
        wait_until_caught(daemon, signal.SIGHUP)  # the earliest moment the daemon can survive it
        daemon.process.send_signal(signal.SIGHUP)
        collect(subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 5, timeout=60, daemon=daemon)
        lines.wait_for("reload done")
        daemon.terminate()
        assert exit_within(daemon, 30) == 0
    stderr = lines.text()
    assert "received SIGHUP during start-up" in stderr, "the SIGHUP arrived before the daemon's own handlers"
    assert stderr.count("reload done") == 1


def test_a_stop_waits_for_blocked_readers_once_not_once_each(start_daemon, free_port, tmp_path):
    """Four cameras whose server accepts the connection and never answers: the readers are blocked inside
    OpenCV's open (30 s timeout; one in the connection, the others on OpenCV's open lock). A SIGTERM gives them one shared 2 s deadline, not 2 s each (issue 11:
    readers cannot be interrupted, so fifty of them made a stop take 100 s)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing is ever read or sent
    port = silent.getsockname()[1]
    try:
        sources = "".join(
            f'[[sources]]\nid = "cam{i}"\nuri = "http://127.0.0.1:{port}/cam{i}.mjpg"\n[sources.reconnect]\nopen_timeout_s = 30\nread_timeout_s = 30\n'
            for i in range(4)
        )
        daemon = start_daemon(detector_config(sources, free_port, wait_for_subscribers="0"))
        lines = StderrLines(daemon)
        for i in range(4):
            lines.wait_for(f"source cam{i}: connecting")
        deadline = time.monotonic() + 30
        while not _accepted_backlog(silent):  # a reader is inside its blocking open (OpenCV opens one at a
            assert time.monotonic() < deadline, "no reader connected"  # time: the others wait on its lock)
            time.sleep(0.01)  # polled with a deadline: the readers' connects have no event here
        signalled = time.monotonic()
        daemon.terminate()
        assert exit_within(daemon, 30) == 0
        took = time.monotonic() - signalled
        assert took < 5, f"the stop took {took:.1f} s: the blocked readers' waits added up"
        assert lines.text().count("reader did not stop in time") == 4
    finally:
        silent.close()


_accepted: list = []


def _accepted_backlog(server: socket.socket) -> list:
    """Accept what is waiting (so the count is of real connections), keeping the sockets open and silent."""
    server.setblocking(False)
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return _accepted
        _accepted.append(connection)


def test_a_backend_failure_is_not_a_user_error_but_still_one_line_and_exit_1(tmp_path):
    """The documented tree: BackendError and PublisherError are siblings of UserError (a failing GPU or
    backend is not the user's mistake), yet the command reports them the same way: one
    ``trtstream: error:`` line, no traceback, exit 1. A model file ONNX Runtime cannot parse fails the real
    ``engine build`` (in its build process) with a BackendError, on any machine."""
    assert not issubclass(BackendError, UserError) and not issubclass(PublisherError, UserError)
    assert issubclass(BackendError, TrtstreamError) and issubclass(PublisherError, TrtstreamError)
    assert issubclass(CudaError, BackendError) and not issubclass(CudaError, UserError)
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an ONNX model\n" * 64)
    config = tmp_path / "c.toml"
    config.write_text(f'[[sources]]\nid = "s"\nuri = "synthetic:64x64"\n[model]\npath = "{model}"\npipeline = "detection"\n'
                      '[engine]\nbackend = "onnxruntime"\n')
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "engine", "build", str(config), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("trtstream: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"trtstream: error: {model}: ONNX Runtime cannot optimise the model: "), done.stderr
    assert "INVALID_PROTOBUF" in errors[0] and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
