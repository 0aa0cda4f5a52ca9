"""The MQTT sink: the same JSON messages as the ZeroMQ publisher, into a broker (paho-mqtt).

Topics, under ``<topic_root>/<instance>`` (``instance`` defaults to the host name, so a fleet of
daemons on one broker stays apart and a restart keeps its topics):

* ``availability`` — ``online`` once connected, ``offline`` at a clean stop; both retained, and
  ``offline`` is also the last will the broker publishes when the daemon dies (kill -9, power cut);
* ``<source>/event``, ``<source>/track``, ``<source>/eos`` — analytics events, ended tracks and
  end-of-stream, exactly the ZeroMQ messages' JSON;
* ``<source>/snapshot`` — with ``[snapshots]``, the JPEG of the object of the latest event or track
  message that has one (retained), right after that message;
* ``<source>/result`` — per-frame results, only with ``results = true``, at most ``results_per_second``;
* ``heartbeat`` — the heartbeat.

Threads and ownership: the publisher thread calls :meth:`MqttSink.offer` (a deque append and an event:
it never waits for the network); this sink's thread moves messages from that bounded outbox (the
oldest dropped and counted when full) to paho while connected, keeping at most ``WINDOW`` unacknowledged
(QoS 1 and 2 messages in flight are re-sent by paho after a reconnect); paho's own network thread
connects, reconnects with backoff and calls back. A broker that is down, refuses us or goes away costs
counted outbox drops at worst, never a result on ZeroMQ and never the daemon.

paho-mqtt because it is the Eclipse reference client: MQTT 3.1.1 and 5, TLS, last will, QoS 2 and
reconnect, pure Python, no dependencies of its own.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from ..errors import UserError
from ..sinkconfig import MqttSinkConfig
from ..threadname import name_this_thread

__all__ = ["MqttSink", "SinkStats", "WINDOW"]

log = logging.getLogger("trtstream.sinks")

WINDOW = 256  # messages handed to paho and not yet acknowledged, at most
STOP_FLUSH_S = 3.0  # at a stop, how long the outbox may take to drain before "offline"


@dataclass
class SinkStats:
    """Counters of one sink. ``queued`` and ``dropped_outbox``: the publisher thread; ``sent``: the sink's
    thread; ``acknowledged``, ``connects``, ``disconnects``, ``connected``: paho's thread."""

    queued: int = 0
    dropped_outbox: int = 0
    skipped_rate: int = 0  # results over results_per_second, never queued
    sent: int = 0
    acknowledged: int = 0
    connects: int = 0
    disconnects: int = 0
    connected: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {"connected": self.connected, "queued": self.queued, "sent": self.sent, "acknowledged": self.acknowledged,
                "dropped_outbox": self.dropped_outbox, "skipped_rate": self.skipped_rate, "connects": self.connects,
                "disconnects": self.disconnects}  # fmt: skip


def _read_password(config: MqttSinkConfig, where: str) -> str | None:
    if config.password is not None:
        return config.password.get_secret_value()
    if config.password_file is None:
        return None
    try:
        return config.password_file.read_text().rstrip("\r\n")
    except OSError as exc:
        raise UserError(f"{where}.password_file: cannot read {config.password_file}: {exc.strerror or exc}") from None


def _check_files(config: MqttSinkConfig, where: str) -> None:
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, key)
        if path is not None and not path.is_file():
            raise UserError(f"{where}.{key}: no such file: {path}")


class MqttSink:
    """One ``[[sinks]]`` entry of kind ``mqtt``. ``where``: its config key (``sinks[0]``) for errors."""

    def __init__(self, config: MqttSinkConfig, where: str = "sinks"):
        self.config = config
        self.name = config.name
        self.stats = SinkStats()
        self.wants_results = config.results
        self._where = where
        self._prefix = config.prefix
        self._availability = f"{self._prefix}/availability"
        self._buckets: dict[str, tuple[float, float]] = {}  # the publisher thread's: source -> (tokens, when)
        self._outbox: collections.deque[tuple[str, bytes, bool]] = collections.deque()  # topic, payload, retain
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink:{config.name}", daemon=True)
        self._reported: str | None = None  # the last connection problem logged (each new one once)
        self._own_messages = 0  # availability messages (paho's thread): acknowledged like the others

    # -- lifecycle -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The heartbeat's entry for this sink."""
        return {"name": self.name, "kind": "mqtt", **self.stats.snapshot()}

    def start(self) -> None:
        """Prepare the client (a missing certificate or unreadable password is a UserError now) and
        connect in the background: a broker that is not up yet is retried, not an error."""
        config = self.config
        _check_files(config, self._where)
        password = _read_password(config, self._where)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id or f"trtstream-{config.instance_name}",
                             protocol=mqtt.MQTTv311, clean_session=True)  # fmt: skip
        client.will_set(self._availability, b"offline", qos=config.qos, retain=True)
        if config.username is not None:
            client.username_pw_set(config.username, password)
        if config.tls:
            try:
                client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                               certfile=str(config.cert_file) if config.cert_file else None,
                               keyfile=str(config.key_file) if config.key_file else None, cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise UserError(f"{self._where}: the TLS files cannot be used: {exc}") from None
        client.reconnect_delay_set(max(1, round(config.reconnect_min_s)), max(1, round(config.reconnect_max_s)))
        client.max_inflight_messages_set(WINDOW)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect_async(config.host, config.broker_port, keepalive=config.keepalive_s)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self._where}.host: {config.host}:{config.broker_port}: {exc}") from None
        client.loop_start()
        self._thread.start()
        log.info("mqtt sink %s: publishing to %s:%d under %s/", self.name, config.host, config.broker_port, self._prefix)

    def stop(self) -> None:
        """Send what the outbox holds (up to ``STOP_FLUSH_S``), then ``offline`` (retained), then disconnect."""
        if self._stop.is_set() or self._client is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(STOP_FLUSH_S + 5.0)
        client = self._client
        if self.stats.connected:
            self._own_messages += 1
            info = client.publish(self._availability, b"offline", qos=self.config.qos, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        client.loop_stop()

    # -- the publisher thread ----------------------------------------------------------------------
    def offer(self, kind: str, source_id: str | None, payload: bytes, attachment: bytes | None = None) -> None:
        """Queue one message (``kind``: result, event, track, eos, heartbeat); never waits. An event's or
        track's snapshot goes to ``<source>/snapshot`` (retained: the newest one is there for a dashboard)."""
        config = self.config
        if kind == "result":
            if not self.wants_results:
                return
            if not self._results_bucket(source_id or ""):
                self.stats.skipped_rate += 1
                return
        elif kind == "heartbeat":
            if not config.heartbeats:
                return
        elif not config.events:
            return
        topic = f"{self._prefix}/heartbeat" if source_id is None else f"{self._prefix}/{source_id}/{kind}"
        self._queue(topic, payload, False)
        if attachment is not None:
            self._queue(f"{self._prefix}/{source_id}/snapshot", attachment, True)
        self._wake.set()

    def _queue(self, topic: str, payload: bytes, retain: bool) -> None:
        if len(self._outbox) >= self.config.outbox_size:
            self._outbox.popleft()
            self.stats.dropped_outbox += 1
        self._outbox.append((topic, payload, retain))
        self.stats.queued += 1

    def _results_bucket(self, source_id: str) -> bool:
        """A token bucket per source: ``results_per_second`` on average, a batch's worth (up to that many)
        at once, so a high rate is not cut down to one result per batch."""
        rate = self.config.results_per_second
        now = time.monotonic()
        tokens, then = self._buckets.get(source_id, (max(1.0, rate), now))
        tokens = min(max(1.0, rate), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[source_id] = (tokens, now)
            return False
        self._buckets[source_id] = (tokens - 1.0, now)
        return True

    # -- this sink's thread ------------------------------------------------------------------------
    def _run(self) -> None:
        name_this_thread()
        client = self._client
        flush_until: float | None = None
        while True:
            if self._stop.is_set() and flush_until is None:
                flush_until = time.monotonic() + STOP_FLUSH_S
            if flush_until is not None and (time.monotonic() >= flush_until or (not self._outbox and self._unacknowledged() == 0)):
                return
            self._wake.wait(0.05 if flush_until is not None else 0.5)
            self._wake.clear()
            while self._outbox and self.stats.connected and self._unacknowledged() < WINDOW:
                topic, payload, retain = entry = self._outbox.popleft()
                info = client.publish(topic, payload, qos=self.config.qos, retain=retain)
                if info.rc == mqtt.MQTT_ERR_NO_CONN:  # lost the connection just now: keep it for the next one
                    self._outbox.appendleft(entry)
                    break
                self.stats.sent += 1

    def _unacknowledged(self) -> int:
        return self.stats.sent + self._own_messages - self.stats.acknowledged

    # -- paho's thread -----------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._report(f"the broker {self.config.host}:{self.config.broker_port} refused the connection: {reason}")
            return
        self.stats.connects += 1
        self.stats.connected = True
        self._own_messages += 1
        client.publish(self._availability, b"online", qos=self.config.qos, retain=True)
        if self._reported is not None:
            log.info("mqtt sink %s: connected to %s:%d again", self.name, self.config.host, self.config.broker_port)
        self._reported = None
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._report(f"cannot reach the broker {self.config.host}:{self.config.broker_port}; retrying")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.stats.connected:
            self.stats.disconnects += 1
        self.stats.connected = False
        if not self._stop.is_set():
            self._report(f"disconnected from {self.config.host}:{self.config.broker_port} ({reason}); reconnecting")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.stats.acknowledged += 1

    def _report(self, problem: str) -> None:
        """Log a connection problem once, until it changes or the connection is back."""
        if problem != self._reported:
            log.warning("mqtt sink %s: %s", self.name, problem)
            self._reported = problem
