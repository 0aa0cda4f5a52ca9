"""``trtstream subscribe`` and ``ResultSubscriber`` against real publishers, plain and under CURVE.

The publisher is daemon/publisher.py itself on a real tcp socket in this process (its CURVE set up from
a real ``[security]`` config and real keys), fed schema-shaped results by a thread until the test ends;
one test runs the whole daemon instead. The CLI runs as a real subprocess, once through a real shell
pipeline. Nothing waits for time to pass: every wait is a poll with a deadline on something that must
happen (a line, a handshake report, a process exit).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from daemon import __version__
from daemon.client import ResultSubscriber
from daemon.config import PublisherConfig
from daemon.entities import Frame, FrameResult, ImageShape
from daemon.errors import UsageError
from daemon.opsconfig import CurveConfig, SecurityConfig
from daemon.publisher import Publisher
from daemon.security import AUTHORIZED_DIR, KeyPair, generate_keys
from daemon.stats import PipelineStats, SourceStats

from .conftest import REPO, asset, validate_message

MODEL_INFO = {"id": "test@000000000000", "sha256": "0" * 64, "pipeline": "detection"}
DETECTION = {"label": "person", "class_id": 0, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0]}


class LivePublisher:
    """daemon.publisher.Publisher publishing one result per source every ``period`` seconds, and its own
    heartbeats every ``heartbeat_s``, until ``stop()``: a daemon's wire traffic without a model."""

    def __init__(self, endpoint: str, sources: list[str], *, security: SecurityConfig | None, heartbeat_s: float, period: float):
        self.endpoint = endpoint
        self.stats = {s: SourceStats(s, "synthetic:320x240@100", "synthetic", state="running") for s in sources}
        self._started = time.monotonic()
        self._period = period
        self._stop = threading.Event()
        self._publisher = Publisher(
            PublisherConfig(endpoints=[endpoint], heartbeat_interval_s=heartbeat_s, linger_ms=0),
            "f" * 32, MODEL_INFO, self.stats, self._heartbeat, context=zmq.Context(), security=security,
        )  # fmt: skip
        self._feeder = threading.Thread(target=self._feed, name="test-feeder", daemon=True)

    def start(self) -> "LivePublisher":
        self._publisher.start()
        self._feeder.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._feeder.join(10)
        self._publisher.stop()

    def _heartbeat(self) -> dict:
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "version": __version__,
            "backend": {"name": "onnxruntime", "version": "test", "device": "cpu", "max_batch": 1},
            "pipeline": PipelineStats().snapshot(),
            "sources": [stats.snapshot() for stats in self.stats.values()],
            "engine": None,
            "reload": {"count": 0, "last_error": None},
        }

    def _feed(self) -> None:
        index = 0
        while not self._stop.wait(self._period):
            now = time.time()
            frames = [Frame(source, index, None, ImageShape((240, 320, 3)), now, time.monotonic()) for source in self.stats]
            self._publisher.submit_many([FrameResult(f, {"detections": [DETECTION]}, now, now, 1, "onnxruntime") for f in frames])
            index += 1


@pytest.fixture
def publish(free_port):
    """Start a LivePublisher on ``tcp://127.0.0.1:<free port>``; stopped at the end of the test."""
    started: list[LivePublisher] = []

    def start(sources=("cam1",), *, security: SecurityConfig | None = None, heartbeat_s: float = 0.05, period: float = 0.01) -> LivePublisher:
        publisher = LivePublisher(f"tcp://127.0.0.1:{free_port}", list(sources), security=security, heartbeat_s=heartbeat_s, period=period)
        started.append(publisher)
        return publisher.start()

    yield start
    for publisher in started:
        publisher.stop()


@pytest.fixture
def keys(tmp_path) -> dict[str, KeyPair]:
    return generate_keys(tmp_path / "keys", ["viewer"])


@pytest.fixture
def intruder(tmp_path) -> KeyPair:
    """A valid client key pair that the daemon has never authorised."""
    return generate_keys(tmp_path / "other", ["intruder"])["intruder"]


def curve_security(keys_dir: Path) -> SecurityConfig:
    return SecurityConfig(curve=CurveConfig(enabled=True, server_secret_key=keys_dir / "server.key_secret", authorized_clients=keys_dir / AUTHORIZED_DIR))


def trtstream(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def json_lines(out: str) -> list[dict]:
    headers = [json.loads(line) for line in out.splitlines()]
    for header in headers:
        validate_message(header)
    return headers


def next_result(subscriber: ResultSubscriber, timeout: float = 10.0) -> dict:
    """The next result header (heartbeats skipped); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = subscriber.receive(timeout=remaining)
        if message is not None and message.type == "result":
            validate_message(message.header)
            return message.header
    raise AssertionError(f"no result from {subscriber.endpoint} within {timeout}s")


def read_line(stream, timeout: float) -> str:
    """One line from a subprocess pipe, or AssertionError after ``timeout`` (readline alone would block)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no line within {timeout}s")
    return stream.readline()


# -- endpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("localhost:5560", "endpoint 'localhost:5560' has no transport: did you mean tcp://localhost:5560?"),
        ("/run/trtstream/results.ipc", "did you mean ipc:///run/trtstream/results.ipc?"),
        ("tcp://localhost", "cannot connect to 'tcp://localhost': Invalid argument"),
        ("http://127.0.0.1:5560", "cannot connect to 'http://127.0.0.1:5560': Protocol not supported"),
    ],
)
def test_an_unusable_endpoint_is_one_line_naming_it(endpoint, expected):
    done = trtstream("subscribe", endpoint)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("trtstream: error: "), done.stderr
    assert expected in done.stderr


def test_result_subscriber_refuses_an_unusable_endpoint_before_connecting():
    with pytest.raises(UsageError, match="did you mean tcp://127.0.0.1:5560"):
        ResultSubscriber("127.0.0.1:5560")


# -- output ----------------------------------------------------------------------------------------


def test_json_into_head_ends_quietly_with_exit_0(publish, tmp_path):
    """A real ``| head -1``: head exits after one line, the subscriber's next write meets a closed pipe."""
    publisher = publish()
    script = '"$0" -m daemon subscribe "$1" --json 2>"$2" | head -n 1; echo "${PIPESTATUS[0]}" >"$3"'
    err, status = tmp_path / "stderr", tmp_path / "status"
    done = subprocess.run(
        ["bash", "-c", script, sys.executable, publisher.endpoint, str(err), str(status)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [header] = json_lines(done.stdout)
    assert header["type"] == "result"
    assert err.read_text() == "", "no BrokenPipeError traceback, no message"
    assert status.read_text().strip() == "0"


def test_json_prints_heartbeats_only_with_heartbeats(publish):
    """Heartbeats come five times as often as results here, so any leak into the output would show."""
    publisher = publish(("cam1", "cam2"), heartbeat_s=0.01, period=0.05)
    plain = trtstream("subscribe", publisher.endpoint, "--json", "--count", "6")
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    headers = json_lines(plain.stdout)
    assert {h["type"] for h in headers} == {"result"} and len(headers) == 6

    with_heartbeats = trtstream("subscribe", publisher.endpoint, "--json", "--heartbeats", "--count", "6")
    assert with_heartbeats.returncode == 0, with_heartbeats.stderr
    types = [h["type"] for h in json_lines(with_heartbeats.stdout)]
    assert types.count("result") == 6 and "heartbeat" in types


def test_an_unknown_source_is_one_warning_listing_the_daemons_sources(publish):
    publisher = publish(("cam1", "cam2"), heartbeat_s=0.01, period=0.02)
    done = trtstream("subscribe", publisher.endpoint, "--source", "cam1", "--source", "cam9", "--heartbeats", "--count", "25")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("[heartbeat]") for line in lines) >= 2, "several heartbeats, yet one warning"
    assert not [line for line in lines if line.startswith("cam2 ")], "--source filters"
    assert done.stderr == "trtstream: warning: the daemon has no source 'cam9' (its sources: cam1, cam2)\n"


# -- CURVE -----------------------------------------------------------------------------------------


def test_result_subscriber_under_curve_and_an_unauthorised_key_receives_nothing(publish, keys, intruder):
    publisher = publish(security=curve_security(keys["server"].public.parent))
    server_z85 = zmq.auth.load_certificate(keys["server"].public)[0].decode()
    with (
        ResultSubscriber(publisher.endpoint, curve_server_key=keys["server"].public, curve_client_keys=keys["viewer"].secret) as viewer,
        ResultSubscriber(publisher.endpoint, curve_server_key=server_z85, curve_client_keys=str(keys["viewer"].secret)) as by_text,
        ResultSubscriber(publisher.endpoint, curve_server_key=keys["server"].public, curve_client_keys=intruder.secret) as refused,
    ):
        assert next_result(viewer)["source_id"] == "cam1"
        assert next_result(by_text)["source_id"] == "cam1", "the server key given as its Z85 text"
        assert wait_for_handshake_failure(refused) == f"{publisher.endpoint} refused this client's key (its public key is not among the daemon's authorized_clients)"
        assert viewer.handshake_failure is None
        # the refusal has happened; results published from now on reach the viewer and not the intruder
        first = next_result(viewer)["seq"]
        assert [next_result(viewer)["seq"] for _ in range(5)] == list(range(first + 1, first + 6))
        assert refused.receive(timeout=0.3) is None


def test_pinning_another_server_key_is_reported(publish, keys, intruder):
    """A CURVE client that pins a key which is not this daemon's hears nothing; handshake_failure says
    why, as soon as the handshake fails (an event, not a wait)."""
    publisher = publish(security=curve_security(keys["server"].public.parent))
    other_server = intruder.public.parent / "server.key"
    with ResultSubscriber(publisher.endpoint, curve_server_key=other_server, curve_client_keys=keys["viewer"].secret) as fooled:
        assert wait_for_handshake_failure(fooled) == (
            f"{publisher.endpoint} failed the CURVE handshake (is the server key this daemon's server.key, and [security.curve] enabled there?)"
        )


def test_curve_keys_against_a_plain_daemon_are_reported(publish, keys, tmp_path):
    """libzmq reports this failure as a protocol mismatch or, depending on timing, without detail:
    either way the report names the endpoint and the setting to check."""
    publisher = publish()
    with ResultSubscriber(publisher.endpoint, curve_server_key=keys["server"].public, curve_client_keys=keys["viewer"].secret) as mismatched:
        failure = wait_for_handshake_failure(mismatched)
        assert failure.startswith(publisher.endpoint) and "[security.curve] enabled there?)" in failure
    with pytest.raises(UsageError, match="the daemon runs CURVE on tcp endpoints only, ipc stays plain"):
        ResultSubscriber(f"ipc://{tmp_path}/results.ipc", curve_server_key=keys["server"].public, curve_client_keys=keys["viewer"].secret)


def wait_for_handshake_failure(subscriber: ResultSubscriber, timeout: float = 10.0) -> str:
    """Poll until the subscriber reports a failed handshake; it must receive nothing meanwhile."""
    deadline = time.monotonic() + timeout
    while subscriber.handshake_failure is None and time.monotonic() < deadline:
        assert subscriber.receive(timeout=0.1) is None, "a client whose handshake fails received a message"
    assert subscriber.handshake_failure is not None, f"no handshake failure reported within {timeout}s"
    return subscriber.handshake_failure


def test_subscribe_cli_under_curve(publish, keys):
    publisher = publish(security=curve_security(keys["server"].public.parent))
    done = trtstream("subscribe", publisher.endpoint, "--server-key", str(keys["server"].public), "--client-key", str(keys["viewer"].secret), "--json", "--count", "3")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [h["type"] for h in json_lines(done.stdout)] == ["result"] * 3


def test_subscribe_cli_with_an_unauthorised_key_receives_nothing_and_says_why(publish, keys, intruder):
    publisher = publish(security=curve_security(keys["server"].public.parent))
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "subscribe", publisher.endpoint, "--json", "--heartbeats",
         "--server-key", str(keys["server"].public), "--client-key", str(intruder.secret)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        warning = read_line(process.stderr, 20)
        assert warning == f"trtstream: warning: {publisher.endpoint} refused this client's key (its public key is not among the daemon's authorized_clients)\n"
        with ResultSubscriber(publisher.endpoint, curve_server_key=keys["server"].public, curve_client_keys=keys["viewer"].secret) as viewer:
            for _ in range(5):  # results (and heartbeats) keep flowing to an authorised client meanwhile
                next_result(viewer)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == "", "the unauthorised subscriber printed something"
    assert err == ""


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--server-key", "{dir}/nowhere.key", "--client-key", "{dir}/viewer.key_secret"], "cannot load CURVE key {dir}/nowhere.key: no such file"),
        (["--server-key", "{dir}/server.key", "--client-key", "{dir}/nowhere.key_secret"], "cannot read secret key {dir}/nowhere.key_secret: No such file"),
        (["--server-key", "{dir}/server.key", "--client-key", "{dir}/viewer.key"], "{dir}/viewer.key holds no secret key"),
        (["--server-key", "{dir}/garbage.key", "--client-key", "{dir}/viewer.key_secret"], "cannot load CURVE key {dir}/garbage.key: no public-key line"),
        (["--server-key", "{dir}/server.key", "--client-key", "{dir}/open.key_secret"], "secret key {dir}/open.key_secret is accessible by others"),
        (["--server-key", "{dir}/server.key"], "--server-key and --client-key go together"),
    ],
)
def test_a_bad_key_file_is_one_line_naming_it(keys, flags, named):
    directory = keys["server"].public.parent
    (directory / "garbage.key").write_text("not a certificate\n")
    (directory / "open.key_secret").write_bytes(keys["viewer"].secret.read_bytes())
    (directory / "open.key_secret").chmod(0o644)
    done = trtstream("subscribe", "tcp://127.0.0.1:5560", *[f.format(dir=directory) for f in flags])
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("trtstream: error: "), done.stderr
    assert named.format(dir=directory) in done.stderr


def test_keys_generate_client_keeps_the_server_key_and_the_new_client_connects(free_port, tmp_path, publish):
    """The operator's path: keys for one client, later a second one; the daemon (restarted, as the
    command says) admits the new client while the first one's server.key stays valid."""
    directory = tmp_path / "keys"
    assert trtstream("keys", "generate", str(directory), "--client", "viewer").returncode == 0
    server_files = {p: p.read_bytes() for p in (directory / "server.key", directory / "server.key_secret")}

    added = trtstream("keys", "generate", str(directory), "--client", "late")
    assert added.returncode == 0, added.stderr
    assert {p: p.read_bytes() for p in server_files} == server_files, "the server key pair is byte-identical"
    assert "kept, unchanged" in added.stdout and "reload the daemon" in added.stdout
    assert (directory / AUTHORIZED_DIR / "late.key").read_bytes() == (directory / "late.key").read_bytes()

    publisher = publish(security=curve_security(directory))
    for client in ("viewer", "late"):
        done = trtstream("subscribe", publisher.endpoint, "--server-key", str(directory / "server.key"),
                         "--client-key", str(directory / f"{client}.key_secret"), "--json", "--count", "2")  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", (client, done.stderr)
        assert len(json_lines(done.stdout)) == 2


def test_a_curve_daemon_end_to_end(start_daemon, free_port, tmp_path):
    """``keys generate``, a real ``trtstream run`` with ``[security.curve]`` (paths relative to the
    config) on a synthetic source, and ``subscribe --server-key --client-key --until-eos``."""
    assert trtstream("keys", "generate", str(tmp_path / "keys"), "--client", "viewer").returncode == 0
    config = f"""
[[sources]]
id = "synth"
uri = "synthetic:320x240@200"
max_frames = 8
drop_policy = "block"  # every one of the 8 frames, however fast the pattern runs

[model]
path = "{asset('models/yolov3_tiny_320.onnx')}"
pipeline = "detection"
labels = "{asset('labels/coco.txt')}"

[publisher]
endpoints = ["tcp://127.0.0.1:{free_port}"]
heartbeat_interval_s = 0.5
wait_for_subscribers = 1
wait_for_subscribers_timeout_s = 20

[security.curve]
enabled = true
server_secret_key = "keys/server.key_secret"
authorized_clients = "keys/{AUTHORIZED_DIR}"
"""
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "daemon", "subscribe", f"tcp://127.0.0.1:{free_port}", "--json", "--until-eos",
         "--server-key", str(tmp_path / "keys" / "server.key"), "--client-key", str(tmp_path / "keys" / "viewer.key_secret")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        daemon = start_daemon(config)
        out, err = subscriber.communicate(timeout=120)
        assert daemon.wait(30) == 0, daemon.stderr[-3000:]
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.communicate()
    assert subscriber.returncode == 0, err
    headers = json_lines(out)
    assert [h["frame"]["index"] for h in headers if h["type"] == "result"] == list(range(8))
    assert headers[-1]["type"] == "eos" and headers[-1]["reason"] == "max_frames"
