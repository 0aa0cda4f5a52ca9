"""RTSP cameras against a real RTSP server (issue 13, item 4): gst-rtsp-server, started by each test as a
subprocess of the system python3 (tests/rtsp_server.py; ``.ci/run`` installs Debian's
``gir1.2-gst-rtsp-server-1.0``, ``python3-gi`` and the GStreamer plugins), serving live H.264 from x264.
The daemon is the real one, reading with OpenCV's FFmpeg. Covered: RTP over TCP and over UDP (each
against a server that accepts only that one, so the transport is proven, not assumed), basic
authentication with the password never shown, the server going away and coming back, and a camera
that stops sending while its session stays open. Every wait is a poll with a deadline."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon.client import ResultSubscriber
from daemon.netaddr import free_loopback_port

from .conftest import all_ended, collect, detector_config, missing

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
PASSWORD = "s3cr3t-Pw"



def _server_available() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc'), 'no x264enc (gstreamer1.0-plugins-ugly)'")  # fmt: skip
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return f"no {SYSTEM_PYTHON}"
    if result.returncode != 0:
        return (f"the RTSP server needs gst-rtsp-server for the system python3 (Debian: gir1.2-gst-rtsp-server-1.0 python3-gi "
                f"gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly): {result.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    return None


class RtspCamera:
    """tests/rtsp_server.py in a subprocess: ``rtsp://127.0.0.1:<port>/cam``. ``stop()`` kills it (the
    camera is gone); ``start()`` again serves on the same port; ``stall()``/``resume()`` stop and restart
    its frames with the session open."""

    def __init__(self, port: int, *extra: str):
        self.port = port
        self._extra = extra
        self._process: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()

    def url(self, credentials: str = "") -> str:
        return f"rtsp://{credentials}127.0.0.1:{self.port}/cam"

    def start(self) -> "RtspCamera":
        self._process = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *self._extra],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        threading.Thread(target=self._read, args=(self._process,), daemon=True).start()
        self._wait_for(f"ready {self.port}")
        return self

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._changed:
                self._lines.append(line.strip())
                self._changed.notify_all()

    def _wait_for(self, line: str, timeout: float = 30) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: line in self._lines or self._process.poll() is not None, timeout):
                raise AssertionError(f"the RTSP server did not say {line!r} within {timeout}s: {self._lines}")
            assert line in self._lines, f"the RTSP server exited: {self._lines}"
            self._lines.remove(line)

    def _command(self, command: str, ack: str) -> None:
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        self._wait_for(ack)

    def stall(self) -> None:
        self._command("stall", "stalled")

    def resume(self) -> None:
        self._command("resume", "resumed")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    @property
    def output(self) -> str:
        return "\n".join(self._lines)


@pytest.fixture(scope="module")
def rtsp_server_available():
    reason = _server_available()
    if reason:
        missing(reason)


@pytest.fixture
def rtsp_camera(rtsp_server_available):
    """Start an RtspCamera (arguments: tests/rtsp_server.py's options) on a free port; killed at the end."""
    started: list[RtspCamera] = []

    def start(*extra: str) -> RtspCamera:
        camera = RtspCamera(free_loopback_port(), *extra).start()
        started.append(camera)
        return camera

    yield start
    for camera in started:
        camera.stop()


def camera_config(sources: dict[str, tuple[str, str]], port: int) -> str:
    """Sources id -> (url, rtsp_transport), quick reconnects and a 1 s read timeout, a daemon that outlives
    its cameras."""
    blocks = "".join(
        f'[[sources]]\nid = "{source_id}"\nuri = "{url}"\nrtsp_transport = "{transport}"\n'
        "[sources.reconnect]\ninitial_delay_s = 0.2\nmax_delay_s = 1.0\nopen_timeout_s = 3\nread_timeout_s = 1\n"
        for source_id, (url, transport) in sources.items()
    )
    return detector_config(blocks, port, engine="max_batch = 2\nmax_wait_ms = 5") + "\n[daemon]\nexit_when_sources_end = false\n"


def results(messages, source: str | None = None):
    return [m for m in messages if m.type == "result" and (source is None or m.header["source_id"] == source)]


def last_states(messages) -> dict[str, dict]:
    """Each source's entry in the last heartbeat of ``messages``."""
    beats = [m for m in messages if m.type == "heartbeat"]
    return {s["id"]: s for s in beats[-1].header["sources"]} if beats else {}


@contextlib.contextmanager
def daemon_on(start_daemon, port: int, config: str):
    with ResultSubscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        daemon = start_daemon(config)
        try:
            yield daemon, subscriber
        finally:
            daemon.terminate()
            collect(subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr


def one_served_one_refused(start_daemon, port: int, sources: dict[str, tuple[str, str]]):
    """The daemon on two sources, the first served and the second refused by the camera: run until the
    first has 5 results and the second has reported why it failed; the second never has a result.
    Returns (the stopped daemon, its messages)."""
    served, refused = sources
    with daemon_on(start_daemon, port, camera_config(sources, port)) as (daemon, subscriber):
        messages = collect(
            subscriber,
            lambda ms: len(results(ms, served)) >= 5 and last_states(ms).get(refused, {}).get("last_error"),
            timeout=90, daemon=daemon,
        )  # fmt: skip
    assert not results(messages, refused)
    return daemon, messages


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtp_over_the_transport_asked_for_against_a_server_that_accepts_only_that_one(rtsp_camera, start_daemon, free_port, transport):
    """The server refuses the other transport (461 Unsupported transport at SETUP), so frames prove the
    transport asked for was used; the source asking for the other one fails, retries, and hurts nobody."""
    other = {"tcp": "udp", "udp": "tcp"}[transport]
    camera = rtsp_camera("--transport", transport)
    _, messages = one_served_one_refused(start_daemon, free_port, {"right": (camera.url(), transport), "wrong": (camera.url(), other)})
    wrong = last_states(messages)["wrong"]
    assert wrong["state"] in ("backoff", "connecting"), wrong
    assert "cannot open stream source: rtsp://127.0.0.1" in wrong["last_error"], wrong
    frame = results(messages, "right")[0].header["frame"]
    assert (frame["width"], frame["height"]) == (320, 240)


def test_basic_auth_serves_with_the_right_password_and_never_shows_it(rtsp_camera, start_daemon, free_port):
    camera = rtsp_camera("--user", "admin", "--password", PASSWORD)
    daemon, messages = one_served_one_refused(
        start_daemon, free_port,
        {"authorised": (camera.url(f"admin:{PASSWORD}@"), "auto"), "refused": (camera.url("admin:not-the-password@"), "auto")},
    )  # fmt: skip
    states = last_states(messages)
    assert states["authorised"]["uri"] == camera.url("admin:***@")
    assert states["refused"]["uri"] == camera.url("admin:***@")
    assert "admin:***@" in states["refused"]["last_error"], states["refused"]
    for text, where in ((daemon.stderr, "the daemon's log"), (str([m.header for m in messages]), "the messages")):
        assert PASSWORD not in text and "not-the-password" not in text, f"a password in {where}"


def test_a_camera_that_goes_away_and_comes_back_is_served_again_with_no_frame_twice(rtsp_camera, start_daemon, free_port):
    camera = rtsp_camera()
    with daemon_on(start_daemon, free_port, camera_config({"cam": (camera.url(), "tcp")}, free_port)) as (daemon, subscriber):
        before = collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=90, daemon=daemon)
        camera.stop()  # the server process is gone: the connection drops, new ones are refused
        down = collect(subscriber, lambda ms: last_states(ms).get("cam", {}).get("state") == "backoff", timeout=30, daemon=daemon)
        camera.start()  # the same port again
        after = collect(subscriber, lambda ms: len(results(ms)) >= 10 and last_states(ms).get("cam", {}).get("state") == "running",
                        timeout=90, daemon=daemon)  # fmt: skip
    published = results(before + down + after)
    sequence = [m.header["seq"] for m in published]
    assert sequence == list(range(sequence[0], sequence[0] + len(sequence))), "no published result lost or repeated"
    indexes = [m.header["frame"]["index"] for m in published]
    assert indexes == sorted(set(indexes)), "no frame published twice"
    assert last_states(after)["cam"]["reconnects"] >= 1


def test_a_camera_that_stops_sending_with_its_session_open_is_detected_and_read_again(rtsp_camera, start_daemon, free_port):
    camera = rtsp_camera()
    with daemon_on(start_daemon, free_port, camera_config({"cam": (camera.url(), "tcp")}, free_port)) as (daemon, subscriber):
        collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=90, daemon=daemon)
        camera.stall()
        stalled_at = time.monotonic()
        try:  # a counter, not the backoff state: a heartbeat can fall between the stall's detection and the reopen
            collect(subscriber, lambda ms: last_states(ms).get("cam", {}).get("reconnects", 0) >= 1, timeout=30, daemon=daemon)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe RTSP server said: {camera.output}") from None
        detected_after = time.monotonic() - stalled_at
        camera.resume()
        after = collect(subscriber, lambda ms: len(results(ms)) >= 10 and last_states(ms).get("cam", {}).get("state") == "running",
                        timeout=90, daemon=daemon)  # fmt: skip
    assert last_states(after)["cam"]["reconnects"] >= 1
    assert detected_after < 15, f"the stall was noticed after {detected_after:.1f} s (read_timeout_s = 1)"


def test_rtsp_through_a_gstreamer_pipeline_is_served_with_its_password_masked(gstreamer, rtsp_camera, start_daemon, free_port):
    """The same camera read by GStreamer's rtspsrc (the system OpenCV, as on a Jetson): a live pipeline
    (drop_oldest), its password masked in the pipeline text wherever the source is shown. Its reconnection
    after the server restarts is not claimed: a reopened rtspsrc pipeline sometimes delivered nothing
    again within 90 s (2 of 5 local runs; not yet understood)."""
    camera = rtsp_camera("--user", "admin", "--password", PASSWORD)
    pipeline = (f"rtspsrc location={camera.url(f'admin:{PASSWORD}@')} latency=0 protocols=tcp ! rtph264depay ! h264parse "
                "! avdec_h264 ! videoconvert ! appsink")  # fmt: skip
    config = detector_config(f'[[sources]]\nid = "cam"\nuri = "{pipeline}"\n', free_port, engine="max_batch = 2\nmax_wait_ms = 5")
    config += "\n[daemon]\nexit_when_sources_end = false\n"
    with daemon_on(start_daemon, free_port, config) as (daemon, subscriber):
        messages = collect(subscriber, lambda ms: len(results(ms)) >= 10 and last_states(ms).get("cam", {}).get("state") == "running",
                           timeout=90, daemon=daemon)  # fmt: skip
    state = last_states(messages)["cam"]
    assert state["kind"] == "gstreamer" and "admin:***@" in state["uri"] and PASSWORD not in state["uri"]
    assert (results(messages)[0].header["frame"]["width"], results(messages)[0].header["frame"]["height"]) == (320, 240)
    assert PASSWORD not in daemon.stderr and PASSWORD not in str([m.header for m in messages])
