"""A small subscriber for other Python processes: connect, filter by source, receive parsed messages.

    with ResultSubscriber("tcp://127.0.0.1:5560", sources=["cam1"]) as sub:
        while (message := sub.receive(timeout=5.0)) is not None:
            print(message.source_id, message.header.get("detections"))

Gaps in a source's ``seq`` (messages this subscriber lost because it read too slowly) are counted per
source in ``missed``; a new ``instance_id`` (the daemon restarted) resets the count base.

A daemon with ``[security.curve]`` serves tcp only to CURVE clients: pass the server's public key
(``server.key`` from ``trtstream keys generate``, or its 40-character Z85 text) and this client's
``NAME.key_secret``. A refused handshake is invisible to a SUB socket (it simply receives nothing), so
the subscriber watches its handshakes and says why in ``handshake_failure``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from .errors import UsageError, UserError
from .messages import HEARTBEAT_TOPIC, decode_header
from .security import is_z85_key, load_public, load_secret, set_curve_client_keys

__all__ = ["Message", "ResultSubscriber", "CurveKeys", "load_curve_keys", "check_endpoint"]

_HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


@dataclass(slots=True)
class Message:
    topic: str
    header: dict[str, Any]
    payloads: list[bytes] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.header.get("type", "")

    @property
    def source_id(self) -> str | None:
        return self.header.get("source_id")


class CurveKeys(NamedTuple):
    """What a CURVE client socket needs, in Z85: the server's public key it pins, and its own pair."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes


def load_curve_keys(server_key: str | os.PathLike | bytes, client_secret_file: str | os.PathLike) -> CurveKeys:
    """The keys for a CURVE subscriber, or UsageError naming the file (or key) that is unusable.

    ``server_key``: a ``server.key`` file, or the key itself as 40 Z85 characters (``bytes``, or a
    ``str`` that is no existing path). ``client_secret_file``: this client's ``NAME.key_secret``
    (mode 0600, as ``keys generate`` writes it)."""
    try:
        client_public, client_secret = load_secret(Path(client_secret_file))
        return CurveKeys(_server_public(server_key), client_public, client_secret)
    except UsageError:
        raise
    except UserError as exc:  # the key file was named by the caller: its argument is wrong, exit 2
        raise UsageError(str(exc)) from None


def _server_public(key: str | os.PathLike | bytes) -> bytes:
    if isinstance(key, bytes):
        if not is_z85_key(key):
            raise UsageError("CURVE server key: bytes must be the 40 Z85 characters of a public key")
        return key
    if isinstance(key, str) and is_z85_key(key) and not os.path.exists(key):
        return key.encode("ascii")
    return load_public(Path(key))


def check_endpoint(endpoint: str) -> None:
    """Refuse an endpoint libzmq cannot connect to with one line that names it (and, for the common
    ``host:port``, says what was meant), instead of a ZMQError from deep inside connect."""
    if "://" not in endpoint:
        transport = "ipc" if endpoint.startswith(("/", ".")) else "tcp"
        raise UsageError(f"endpoint {endpoint!r} has no transport: did you mean {transport}://{endpoint}?")


class ResultSubscriber:
    """A SUB socket subscribed to some or all sources (and optionally heartbeats) of one daemon.

    ``curve_server_key`` and ``curve_client_keys`` (both or neither) make it a CURVE client of a
    ``[security.curve]`` daemon; see :func:`load_curve_keys` for what they accept. A bad endpoint or key
    raises UsageError (a UserError) before anything is connected."""

    def __init__(
        self,
        endpoint: str,
        sources: Iterable[str] | None = None,
        *,
        topic_prefix: str = "trtstream",
        heartbeats: bool = True,
        receive_hwm: int = 1000,
        context: zmq.Context | None = None,
        curve_server_key: str | os.PathLike | bytes | None = None,
        curve_client_keys: str | os.PathLike | None = None,
        events: bool = False,
        results: bool = True,
        events_prefix: str | None = None,
    ):
        """``events``: also (or, with ``results = False``, only) the ``event`` and ``track`` messages of
        the same sources, on ``events_prefix`` (default ``<topic_prefix>-events``, the daemon's
        ``publisher.event_topic_prefix`` default)."""
        check_endpoint(endpoint)
        if (curve_server_key is None) != (curve_client_keys is None):
            raise UsageError("CURVE needs both the server's public key and this client's secret key file")
        if curve_server_key is not None and not endpoint.startswith("tcp://"):
            # the daemon binds ipc before it turns CURVE on (daemon/security.py): the handshake could only fail
            raise UsageError(f"CURVE keys for {endpoint!r}: the daemon runs CURVE on tcp endpoints only, ipc stays plain")
        curve = load_curve_keys(curve_server_key, curve_client_keys) if curve_server_key is not None else None
        self.endpoint = endpoint
        self.handshake_failure: str | None = None  # why the daemon and this client could not agree, if so
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._monitor: zmq.Socket | None = None
        try:
            self._configure(sources, topic_prefix, heartbeats, receive_hwm, curve, results)
            if events:
                self._subscribe_events(sources, events_prefix or f"{topic_prefix}-events")
            self._connect(endpoint)
        except BaseException:
            self.close()
            raise
        self._heartbeats = heartbeats
        self._last_seq: dict[tuple[str, str, bool], int] = {}
        self.missed: dict[str, int] = {}

    def _configure(
        self, sources: Iterable[str] | None, topic_prefix: str, heartbeats: bool, receive_hwm: int, curve: CurveKeys | None,
        results: bool = True,
    ) -> None:
        self._socket.setsockopt(zmq.RCVHWM, receive_hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        sources = list(sources) if sources is not None else None
        if sources is None and results:
            self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/".encode())
        else:
            for source in (sources or []) if results else []:
                self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/{source}/".encode())
            if heartbeats:
                self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/{HEARTBEAT_TOPIC}/".encode())
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        if curve is not None:
            set_curve_client_keys(self._socket, curve.server_public, curve.client_public, curve.client_secret)
            # before connect, so the first handshake's outcome cannot be missed
            self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_FAILURES)
            self._poller.register(self._monitor, zmq.POLLIN)

    def _subscribe_events(self, sources: Iterable[str] | None, prefix: str) -> None:
        for topic in ([f"{prefix}/"] if sources is None else [f"{prefix}/{source}/" for source in sources]):
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def _connect(self, endpoint: str) -> None:
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            reason = zmq.strerror(exc.errno)
            raise UsageError(f"cannot connect to {endpoint!r}: {reason} (e.g. tcp://127.0.0.1:5560, ipc:///run/trtstream/results.ipc)") from None

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when nothing arrives within ``timeout`` seconds (messages this
        subscriber skips, and handshake reports, do not extend it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = dict(self._poller.poll(None if remaining is None else int(remaining * 1000)))
            if not ready:
                return None
            if self._monitor is not None and self._monitor in ready:
                self._note_handshake(recv_monitor_message(self._monitor)["event"])
            if self._socket not in ready:
                continue
            parts = self._socket.recv_multipart()
            message = Message(parts[0].decode(), decode_header(parts[1]), parts[2:])
            if message.type == "heartbeat" and not self._heartbeats:
                continue
            self._track(message)
            return message

    def _note_handshake(self, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason = "refused this client's key (its public key is not among the daemon's authorized_clients)"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            reason = "does not speak CURVE on this endpoint (is [security.curve] enabled there?)"
        else:  # libzmq reports a wrong server key this way, and at times a server without CURVE too
            reason = "failed the CURVE handshake (is the server key this daemon's server.key, and [security.curve] enabled there?)"
        self.handshake_failure = f"{self.endpoint} {reason}"

    def _track(self, message: Message) -> None:
        seq, source = message.header.get("seq"), message.source_id
        if seq is None or source is None:
            return
        # events and tracks are numbered apart from results and ends
        key = (message.header["instance_id"], source, message.type in ("event", "track"))
        previous = self._last_seq.get(key)
        if previous is not None and seq > previous + 1:  # a late joiner's first seq is not a gap
            self.missed[source] = self.missed.get(source, 0) + seq - previous - 1
        self._last_seq[key] = seq

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close(linger=0)

    def __enter__(self) -> "ResultSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
