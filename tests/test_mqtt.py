"""The MQTT sink (issue 14, item 3) against a real broker: Debian's mosquitto, started by the tests on
loopback (and stopped and restarted mid-run), a real paho subscriber on it, the real daemon on the real
clip and model beside a ZeroMQ subscriber to compare with. Every wait is a poll with a deadline."""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon.client import ResultSubscriber
from daemon.netaddr import free_loopback_port

from .conftest import all_ended, asset, collect, detector_config, missing, validate_message

mqtt = pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (a dependency of trtstream)")

LINE = "[[lines]]\nname = \"road\"\nsource = \"cam\"\ncoordinates = \"normalized\"\npoints = [[0.5, 0.3], [0.5, 1.0]]\n"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        missing("needs an MQTT broker: apt install mosquitto (.ci/run installs it)")
    return found



class Mosquitto:
    """A real mosquitto on 127.0.0.1:``port``; ``persistence``: it keeps sessions and queued messages
    across a restart (saved at a clean stop)."""

    def __init__(self, directory: Path, *, persistence: bool = False, password_file: Path | None = None):
        self.port = free_loopback_port()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {directory}/", "log_dest stderr",
                 f"user {getpass.getuser()}"]  # as root mosquitto would become "mosquitto", who cannot read the test's files  # fmt: skip
        lines += [f"password_file {password_file}", "allow_anonymous false"] if password_file else ["allow_anonymous true"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(20)


class Subscriber:
    """A paho client that records every message (topic, payload, retain)."""

    def __init__(self, port: int, topic: str, *, client_id: str = "", clean_session: bool = True, qos: int = 1):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, userdata, flags, reason, properties: client.subscribe(topic, qos=qos)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, until, timeout: float = 60.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.snapshot()
            if until(messages):
                return messages
            time.sleep(0.05)
        raise AssertionError(f"MQTT condition not met within {timeout}s; {len(self.snapshot())} messages, last {self.snapshot()[-2:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def sink_config(zmq_port: int, broker_port: int, *, sink: str = "", source: str | None = None, instance: str = "box1") -> str:
    source = source or f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\npace = true\nloop = true\n'
    return detector_config(source, zmq_port) + (
        f"\n[tracking]\nenabled = true\n{LINE}[control]\nenabled = false\n[daemon]\nexit_when_sources_end = false\n"
        f'[[sinks]]\nkind = "mqtt"\nhost = "127.0.0.1"\nport = {broker_port}\ninstance = "{instance}"\n{sink}'
    )


def of(messages, suffix: str) -> list[dict]:
    return [json.loads(payload) for topic, payload, _ in messages if topic.endswith(suffix)]


def availability(messages) -> list[bytes]:
    return [payload for topic, payload, _ in messages if topic.endswith("/availability")]


def sink_state(messages) -> dict:
    beats = [m.header for m in messages if m.type == "heartbeat" and m.header.get("sinks")]
    return beats[-1]["sinks"][0] if beats else {}


@pytest.fixture
def broker(tmp_path):
    started = Mosquitto(tmp_path / "broker").start()
    yield started
    started.stop()


def test_events_results_and_availability_reach_a_real_broker(start_daemon, free_port, broker):
    """The same JSON on MQTT as on ZeroMQ (event, track and result messages byte for byte, by seq), results
    rate-limited, ``online`` then ``offline`` (retained) on SIGTERM, topics under <root>/<instance>/."""
    subscriber = Subscriber(broker.port, "trtstream/box1/#")
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}", events=True) as zmq_subscriber:
            daemon = start_daemon(sink_config(free_port, broker.port, sink="results = true\nresults_per_second = 4\n[snapshots]\nenabled = true\n"))
            zmq = collect(zmq_subscriber, lambda ms: sum(m.type == "event" for m in ms) >= 2 and sum(m.type == "result" for m in ms) >= 60,
                          timeout=240, daemon=daemon)  # fmt: skip
            seen = subscriber.wait_for(lambda ms: len(of(ms, "/cam/event")) >= 2 and availability(ms)[:1] == [b"online"])
            daemon.terminate()
            zmq += collect(zmq_subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
        seen = subscriber.wait_for(lambda ms: availability(ms)[-1:] == [b"offline"], timeout=20)
    finally:
        subscriber.close()
    topics = {topic for topic, _, _ in seen}
    assert topics >= {"trtstream/box1/availability", "trtstream/box1/heartbeat", "trtstream/box1/cam/result", "trtstream/box1/cam/event"}, topics
    for kind in ("event", "track", "result", "eos"):
        by_seq = {m.header["seq"]: m.header for m in zmq if m.type == kind}
        received = of(seen, f"/cam/{kind}")
        for header in received:
            validate_message(header)
            if header["seq"] in by_seq:  # what both subscribers saw: the same message
                assert header == by_seq[header["seq"]], kind
        if kind in ("event", "eos"):
            assert {h["seq"] for h in received} >= set(by_seq), f"{kind} messages missing on MQTT"
    snapshots = [payload for topic, payload, _ in seen if topic == "trtstream/box1/cam/snapshot"]
    with_snapshot = [m for m in zmq if m.type in ("event", "track") and m.payloads]
    assert snapshots and with_snapshot and all(p[:2] == b"\xff\xd8" for p in snapshots)  # JPEGs, beside their messages
    assert {p for p in snapshots} >= {m.payloads[0] for m in with_snapshot if m.header["seq"] in {h["seq"] for h in of(seen, f"/cam/{m.type}")}}
    results = of(seen, "/cam/result")
    span = results[-1]["timestamps"]["published"] - results[0]["timestamps"]["published"]
    assert 5 <= len(results) <= 4 * span + 5, (len(results), span)  # 4 a second, after a first burst of up to 4
    late = Subscriber(broker.port, "trtstream/box1/availability")  # a newcomer gets the retained state
    try:
        assert late.wait_for(lambda ms: bool(ms), timeout=10)[0][1:] == (b"offline", True)
    finally:
        late.close()


def test_kill_9_makes_the_broker_publish_the_last_will(start_daemon, free_port, broker):
    subscriber = Subscriber(broker.port, "trtstream/box1/availability")
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as zmq_subscriber:
            daemon = start_daemon(sink_config(free_port, broker.port))
            collect(zmq_subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 3, timeout=180, daemon=daemon)
            subscriber.wait_for(lambda ms: availability(ms)[-1:] == [b"online"], timeout=30)
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(10)
        subscriber.wait_for(lambda ms: availability(ms)[-1:] == [b"offline"], timeout=30)  # the broker saw the socket close
    finally:
        subscriber.close()


def test_a_broker_restart_loses_nothing_beyond_the_counted_drops(start_daemon, free_port, tmp_path):
    """QoS 1 results, the broker stopped (SIGTERM) and started again mid-run: every result ZeroMQ got is
    on MQTT too, except the outbox's counted drops (none here: the outbox holds them all)."""
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    subscriber = Subscriber(broker.port, "trtstream/box1/cam/result", client_id="test-subscriber", clean_session=False)
    try:
        subscriber.wait_for(lambda ms: subscriber.client.is_connected(), timeout=10)
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as zmq_subscriber:
            daemon = start_daemon(sink_config(free_port, broker.port, sink="results = true\nresults_per_second = 1000\nreconnect_min_s = 1\nreconnect_max_s = 1\n"))
            zmq = collect(zmq_subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 20, timeout=180, daemon=daemon)
            subscriber.wait_for(lambda ms: len(ms) >= 10)
            broker.stop()
            zmq += collect(zmq_subscriber, lambda ms: sink_state(ms).get("connected") is False, timeout=60, daemon=daemon)
            zmq += collect(zmq_subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 20, timeout=120, daemon=daemon)
            broker.start()
            zmq += collect(zmq_subscriber, lambda ms: sink_state(ms).get("connects", 0) >= 2, timeout=60, daemon=daemon)
            daemon.terminate()
            zmq += collect(zmq_subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
        final = sink_state(zmq)
        wanted = {m.header["seq"] for m in zmq if m.type == "result"}
        got = subscriber.wait_for(lambda ms: len(wanted - {json.loads(p)["seq"] for _, p, _ in ms}) <= final["dropped_outbox"], timeout=60)
    finally:
        subscriber.close()
        broker.stop()
    assert final["dropped_outbox"] == 0 and final["skipped_rate"] == 0 and final["disconnects"] >= 1, final
    assert wanted <= {json.loads(p)["seq"] for _, p, _ in got}
    assert daemon.stderr.count("disconnected from 127.0.0.1") == 1, daemon.stderr  # reported once, not per retry


def test_an_absent_broker_never_costs_a_zeromq_result_and_drops_only_the_oldest(start_daemon, free_port):
    port = free_loopback_port()  # nothing listens there
    source = f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 40\n'
    config = sink_config(free_port, port, source=source, sink="results = true\nresults_per_second = 1000\noutbox_size = 5\n")
    daemon = start_daemon(config.replace("exit_when_sources_end = false", "exit_when_sources_end = true"))
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as zmq_subscriber:
        messages = collect(zmq_subscriber, all_ended, timeout=180, daemon=daemon)
    assert daemon.wait(30) == 0, daemon.stderr
    end = next(m.header for m in messages if m.type == "eos")
    assert (end["frames_published"], end["frames_dropped"]) == (40, 0), end
    state = sink_state(messages)
    assert state["connected"] is False and state["sent"] == 0 and state["dropped_outbox"] >= 35, state
    assert daemon.stderr.count(f"cannot reach the broker 127.0.0.1:{port}") == 1, daemon.stderr


def test_a_password_from_a_file_is_used_and_never_shown(start_daemon, free_port, tmp_path):
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        missing("needs mosquitto_passwd (Debian's mosquitto package)")
    secret = "s3cr3t-Pa55word"
    users = tmp_path / "users"
    subprocess.run([passwd, "-c", "-b", str(users), "camera", secret], check=True, capture_output=True)
    users.chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", password_file=users).start()
    (tmp_path / "mqtt-password").write_text(secret + "\n")
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as zmq_subscriber:
            good = start_daemon(sink_config(free_port, broker.port, sink=f'username = "camera"\npassword_file = "{tmp_path / "mqtt-password"}"\n'))
            beats = collect(zmq_subscriber, lambda ms: sink_state(ms).get("acknowledged", 0) >= 2, timeout=180, daemon=good)
            good.terminate()
            beats += collect(zmq_subscriber, all_ended, timeout=60, daemon=good)
            assert good.wait(30) == 0
        bad_port = free_loopback_port()
        bad = start_daemon(sink_config(bad_port, broker.port, sink=f'username = "camera"\npassword = "wrong-{secret}"\n'), name="bad.toml")
        with ResultSubscriber(f"tcp://127.0.0.1:{bad_port}") as zmq_subscriber:
            refused = collect(zmq_subscriber, lambda ms: sum(m.type == "result" for m in ms) >= 5 and sink_state(ms), timeout=180, daemon=bad)
            bad.terminate()
            refused += collect(zmq_subscriber, all_ended, timeout=60, daemon=bad)
        assert bad.wait(30) == 0
    finally:
        broker.stop()
    assert sink_state(refused)["connected"] is False and sink_state(refused)["connects"] == 0
    assert "refused the connection" in bad.stderr, bad.stderr
    for text in (good.stderr, bad.stderr, json.dumps([m.header for m in beats + refused])):
        assert secret not in text


def test_a_password_without_a_username_is_one_line_and_exit_2(start_daemon, free_port):
    daemon = start_daemon(sink_config(free_port, 1883, sink='password = "x"\n'))
    assert daemon.wait(60) == 2
    assert "sinks" in daemon.stderr and "needs a username" in daemon.stderr, daemon.stderr
    assert "Traceback" not in daemon.stderr
