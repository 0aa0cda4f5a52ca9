"""A small subscriber for other Python processes: connect, filter by source, receive parsed messages.

    with ResultSubscriber("tcp://127.0.0.1:5560", sources=["cam1"]) as sub:
        while (message := sub.receive(timeout=5.0)) is not None:
            print(message.source_id, message.header.get("detections"))

Gaps in a source's ``seq`` (messages this subscriber lost because it read too slowly) are counted per
source in ``missed``; a new ``instance_id`` (the daemon restarted) resets the count base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import zmq

from .messages import HEARTBEAT_TOPIC, decode_header

__all__ = ["Message", "ResultSubscriber"]


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


class ResultSubscriber:
    """A SUB socket subscribed to some or all sources (and optionally heartbeats) of one daemon."""

    def __init__(
        self,
        endpoint: str,
        sources: Iterable[str] | None = None,
        *,
        topic_prefix: str = "trtstream",
        heartbeats: bool = True,
        receive_hwm: int = 1000,
        context: zmq.Context | None = None,
    ):
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, receive_hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        sources = list(sources) if sources is not None else None
        if sources is None:
            self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/".encode())
        else:
            for source in sources:
                self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/{source}/".encode())
            if heartbeats:
                self._socket.setsockopt(zmq.SUBSCRIBE, f"{topic_prefix}/{HEARTBEAT_TOPIC}/".encode())
        self._heartbeats = heartbeats
        self._socket.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._last_seq: dict[tuple[str, str], int] = {}
        self.missed: dict[str, int] = {}

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when nothing arrives within ``timeout`` seconds."""
        while True:
            if not self._poller.poll(None if timeout is None else int(timeout * 1000)):
                return None
            parts = self._socket.recv_multipart()
            message = Message(parts[0].decode(), decode_header(parts[1]), parts[2:])
            if message.type == "heartbeat" and not self._heartbeats:
                continue
            self._track(message)
            return message

    def _track(self, message: Message) -> None:
        seq, source = message.header.get("seq"), message.source_id
        if seq is None or source is None:
            return
        key = (message.header["instance_id"], source)
        previous = self._last_seq.get(key)
        if previous is not None and seq > previous + 1:  # a late joiner's first seq is not a gap
            self.missed[source] = self.missed.get(source, 0) + seq - previous - 1
        self._last_seq[key] = seq

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> "ResultSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
