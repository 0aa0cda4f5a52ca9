"""Sinks: where messages go besides the ZeroMQ publisher (``[[sinks]]``). The publisher thread hands each
one every message it publishes, encoded once, through :class:`MessageSink`."""

from __future__ import annotations

from typing import Protocol

__all__ = ["MessageSink"]


class MessageSink(Protocol):
    """Takes the publisher's messages. ``offer`` runs on the publisher thread: it must never wait.
    ``wants_results``: whether per-frame results are offered at all (they are the bulk). ``attachment``:
    an event's or track's snapshot JPEG (``[snapshots]``), the message's second part on ZeroMQ."""

    name: str
    wants_results: bool

    def offer(self, kind: str, source_id: str | None, payload: bytes, attachment: bytes | None = None) -> None: ...

    def status(self) -> dict: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...
