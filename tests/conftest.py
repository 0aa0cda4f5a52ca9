"""Shared fixtures: the real assets, free ports, a daemon subprocess, and a schema-checking subscriber.

Assets (real ONNX models, real video, real images) are built by ``scripts/fetch-assets``; the test
command runs it first. A missing asset is a failure with a hint, never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from daemon.netaddr import free_loopback_port

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
SCHEMA_PATH = REPO / "docs" / "schema" / "message-v1.schema.json"

_VALIDATOR = None
REQUIRE_EXTRAS = os.environ.get("TRTSTREAM_REQUIRE_EXTRAS") == "1"


def missing(message: str) -> None:
    """An optional dependency or tool is absent: skip with the reason, or fail under
    TRTSTREAM_REQUIRE_EXTRAS=1 (scripts/test), so CI can never pass without running the test."""
    if REQUIRE_EXTRAS:
        pytest.fail(message)
    pytest.skip(message)


def bikes_frames(indices=(0, 60, 120, 200)) -> list:
    """Frames ``indices`` of bikes.mp4 (BGR), decoded by OpenCV."""
    import cv2

    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    frames, index = [], 0
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        if index in indices:
            frames.append(image)
        index += 1


def gpu_reason() -> str | None:
    """Why the GPU tests cannot run here, or None (they are marked ``gpu``; scripts/gpu-check runs them)."""
    try:
        from daemon.cuda import cuda_available
    except Exception as exc:  # pragma: no cover
        return f"daemon.cuda unavailable: {exc}"
    return None if cuda_available() else "no NVIDIA GPU (or no cuda-python) on this machine"


def gpu_marks() -> list:
    """``pytestmark`` of a GPU test module: marker ``gpu``, skipped with the reason without a GPU."""
    reason = gpu_reason()
    return [pytest.mark.gpu, pytest.mark.skipif(reason is not None, reason=str(reason))]


def serve_nvdec_clip(start_daemon, port: int, engine: str, env: dict | None = None, decoder: str = "nvdec", source: str = ""):
    """The daemon on the 1080p30 test clip decoded by NVDEC (``engine``: the [engine] lines), checked for
    what every GPU backend must give: every frame in order at 1920x1080, people and bicycles, boxes inside
    the frame. Returns (daemon, result messages). The clip comes from scripts/make-test-clips. ``source``:
    more lines for its [[sources]] table."""
    pytest.importorskip("PyNvVideoCodec", reason="needs PyNvVideoCodec (carried as a wheel to the GPU machine)")
    from daemon.client import ResultSubscriber

    clip = REPO / ".cache" / "bikes_1080p30.mp4"
    if not clip.is_file():
        pytest.fail(f"missing {clip}: run scripts/make-test-clips")
    config = detector_config(f'[[sources]]\nid = "nvdec"\nuri = "{clip}"\ndecoder = "{decoder}"\n{source}', port, engine=engine)
    with ResultSubscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        daemon = start_daemon(config, env=env)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    results = [m for m in messages if m.type == "result"]
    assert [m.header["frame"]["index"] for m in results] == list(range(300)), "every decoded frame, in order"
    assert {(m.header["frame"]["width"], m.header["frame"]["height"]) for m in results} == {(1920, 1080)}
    labels = {d["label"] for m in results for d in m.header["detections"]}
    assert {"person", "bicycle"} <= labels, labels
    for message in results:
        for detection in message.header["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 < x2 <= 1920 and 0 <= y1 < y2 <= 1080
    return daemon, results


def child_processes(pid: int, command_part: bytes) -> list[int]:
    """The direct children of process ``pid`` whose command line holds ``command_part`` (b"daemon.demux",
    b"daemon.gpu.nvdecchild", ...); none once ``pid`` is gone."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    try:
                        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                            if command_part in cmdline.read():
                                found.append(int(child))
                    except OSError:  # it ended meanwhile
                        continue
    except OSError:  # the process is gone: so are its children
        return []
    return found


def read_through_a_small_pool(producer, count: int, skip, check, on_grab=None) -> None:
    """The NVDEC decoding process's pool under a reader's use (tests/test_nvdec_process.py on the CPU,
    tests/test_gpu.py on the GPU): ``count`` frames grabbed; those where ``skip(index)`` are never retrieved
    (a full queue skips them: their slots must come back); the others are retrieved, passed to
    ``check(index, image, pts, grabbed)`` (``grabbed``: what ``on_grab(index)`` returned right after the
    grab), and held two at a time before they go back, as frames queued and in a batch are."""
    held = []
    for index in range(count):
        assert producer.grab(), f"frame {index}"
        grabbed = on_grab(index) if on_grab is not None else None
        if skip(index):
            continue
        image, pts = producer.retrieve()
        check(index, image, pts, grabbed)
        held.append(image)
        if len(held) == 2:
            for old in held:
                old.release()
            held.clear()
    for old in held:
        old.release()


def asset(relative: str) -> Path:
    path = ASSETS / relative
    if not path.is_file():
        pytest.fail(f"missing test asset {path}: run scripts/fetch-assets first")
    return path


def validate_message(header: dict) -> None:
    """Every message in every test goes through the published JSON Schema."""
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema  # imported here so GPU machines can run the GPU tests without it

        _VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    errors = sorted(_VALIDATOR.iter_errors(header), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(f"message does not match {SCHEMA_PATH.name}: {errors[0].message} at {list(errors[0].path)}\n{header}")


@pytest.fixture
def free_port() -> int:
    return free_loopback_port()


def detector_config(sources_toml: str, port: int, **overrides: str) -> str:
    """A detection config over the real YOLOv3-tiny model, with the given [[sources]] blocks."""
    engine = overrides.get("engine", "max_batch = 4\nmax_wait_ms = 5")
    publisher = overrides.get("publisher", "")
    return textwrap.dedent(
        f"""
        {textwrap.dedent(sources_toml)}
        [model]
        path = "{asset('models/yolov3_tiny_416.onnx')}"
        pipeline = "detection"
        labels = "{asset('labels/coco.txt')}"
        [model.detection]
        pad_value = 127
        [engine]
        {engine}
        [publisher]
        endpoints = ["tcp://127.0.0.1:{port}"]
        heartbeat_interval_s = 0.5
        wait_for_subscribers = {overrides.get("wait_for_subscribers", "1")}
        wait_for_subscribers_timeout_s = 20
        {publisher}
        [logging]
        level = "INFO"
        """
    )


class DaemonProcess:
    """``python -m daemon run CONFIG`` as a real subprocess, stderr captured for the assertions. ``env``:
    variables set on top of this process's environment (``tests.doubles.gpu_tensorrt.shim_environment()``
    gives the daemon the GPU TensorRT double as ``tensorrt``). Its stdout and stderr are read as they come
    (threads): a pipe nobody reads fills after 64 KiB and then blocks the daemon's next log line, which
    stalls it whole."""

    def __init__(self, config_path: Path, cache_home: Path, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", str(config_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "XDG_CACHE_HOME": str(cache_home),
                "RUNTIME_DIRECTORY": str(cache_home.parent / "run"),  # its own control socket
                **(env or {}),
            },
        )
        self._stderr: list[str] = []
        self._changed = threading.Condition()  # a stderr line arrived, or stderr closed
        self._stderr_closed = False
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, None), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, pipe, into: list[str] | None) -> None:
        try:
            for line in pipe:
                if into is not None:
                    with self._changed:
                        into.append(line)
                        self._changed.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us at clean-up
            pass
        if into is not None:
            with self._changed:
                self._stderr_closed = True
                self._changed.notify_all()

    @property
    def stderr(self) -> str:
        """What the daemon wrote to stderr so far (all of it once :meth:`wait` returned)."""
        with self._changed:
            return "".join(self._stderr)

    def wait_for_line(self, text: str, timeout: float = 60) -> None:
        """Until a stderr line contains ``text``; fails after ``timeout`` or when stderr closed without it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self._stderr):
                remaining = deadline - time.monotonic()
                if self._stderr_closed or remaining <= 0:
                    raise AssertionError(f"no log line with {text!r} within {timeout}s; stderr:\n{''.join(self._stderr)[-3000:]}")
                self._changed.wait(remaining)

    def stderr_when_closed(self, timeout: float = 30) -> str:
        """All of stderr, once the daemon closed it (it exited)."""
        self._join_readers(timeout)
        return self.stderr

    def wait(self, timeout: float = 60) -> int:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self._join_readers()
            raise AssertionError(f"daemon did not exit within {timeout}s; stderr:\n{self.stderr[-4000:]}") from None
        self._join_readers()
        return self.process.returncode

    def _join_readers(self, timeout: float = 10) -> None:
        for reader in self._readers:
            reader.join(timeout)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self._join_readers()


@pytest.fixture
def start_daemon(tmp_path):
    started: list[DaemonProcess] = []

    def start(config_text: str, name: str = "daemon.toml", env: dict[str, str] | None = None) -> DaemonProcess:
        path = tmp_path / name
        path.write_text(config_text)
        daemon = DaemonProcess(path, tmp_path / "cache-home", env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def collect(subscriber, until, timeout: float = 60.0, daemon: "DaemonProcess | None" = None) -> list:
    """Receive (and schema-check) messages until ``until(messages)`` is true; fail after ``timeout``,
    or at once when ``daemon`` has exited without the condition being met."""
    messages = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout}s; got {len(messages)} messages, last: {messages[-1:]}")
        if daemon is not None and daemon.process.poll() is not None:
            message = subscriber.receive(timeout=0.5)  # what it sent before exiting may still be in flight
            if message is None:
                daemon.wait(5)
                raise AssertionError(f"daemon exited ({daemon.process.returncode}) first; stderr:\n{daemon.stderr[-3000:]}")
            validate_message(message.header)
            messages.append(message)
            continue
        message = subscriber.receive(timeout=min(remaining, 1.0))
        if message is not None:
            validate_message(message.header)
            messages.append(message)
    return messages


def all_ended(messages) -> bool:
    """The daemon's last message: the final heartbeat, which follows every end-of-stream."""
    return any(m.type == "heartbeat" and m.header["final"] for m in messages)


@contextlib.contextmanager
def daemon_under_notify_socket(tmp_path: Path, config: Path, *, watchdog_usec: int | None = None, stdout=subprocess.PIPE):
    """``trtstream run config`` as systemd starts it: a real $NOTIFY_SOCKET datagram socket bound here
    first (and $WATCHDOG_USEC when given). Yields (process, notify socket); on the way out kills the
    daemon if it still runs and closes the socket."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    process = subprocess.Popen([sys.executable, "-m", "daemon", "run", str(config)], cwd=REPO, env=env,
                               stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        yield process, notify
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        notify.close()


@pytest.fixture
def gstreamer():
    """Skip (or, under TRTSTREAM_REQUIRE_GSTREAMER=1, fail) unless this OpenCV has GStreamer: the pip
    wheel has none; ``TRTSTREAM_OPENCV=system scripts/setup`` builds a venv on the system OpenCV."""
    from daemon.capture import gstreamer_available

    if not gstreamer_available():
        message = "this OpenCV has no GStreamer (the pip wheel); TRTSTREAM_OPENCV=system scripts/setup builds a venv on the system OpenCV"
        if os.environ.get("TRTSTREAM_REQUIRE_GSTREAMER") == "1":
            pytest.fail(message)
        pytest.skip(message)
