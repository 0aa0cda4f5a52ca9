"""The live view over HTTP: an index page, a page per source, its MJPEG stream and a snapshot.

Routes (source ids are URL-quoted):

* ``/`` — every source with its state, published fps and a snapshot, each linking to its page;
* ``/sources/<id>`` — the source's page: its annotated stream;
* ``/sources/<id>/stream.mjpg`` — ``multipart/x-mixed-replace`` JPEGs at up to ``view.fps`` (what
  browsers show in an ``<img>``, and what VLC, ffplay and Home Assistant's MJPEG camera read);
* ``/sources/<id>/snapshot.jpg`` — one fresh annotated frame (waits up to ``SNAPSHOT_WAIT_S`` for it;
  the newest one drawn when the source has ended; 503 when there is none).

MJPEG rather than WebRTC or HLS: it needs no encoder process, no signalling and no JavaScript, every
browser shows it in an ``<img>``, and at a few frames a second of one camera its bandwidth is fine for a
set-up tool. The server is :mod:`daemon.httpserve`'s: a viewer that stops reading is cut off after
``REQUEST_TIMEOUT_S`` and its thread ends; at most ``view.max_connections`` are served at once.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

from ..httpserve import BoundedHttpService
from ..netaddr import check_listen_host
from .hub import ViewHub

__all__ = ["ViewServer", "SNAPSHOT_WAIT_S"]

log = logging.getLogger("trtstream.view")

SNAPSHOT_WAIT_S = 3.0
REQUEST_TIMEOUT_S = 10.0  # a stream write may wait this long for a slow viewer before it is cut off
STREAM_IDLE_S = 1.0  # how often a stream with no new picture checks that the view still runs
BOUNDARY = "trtstream-frame"

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{margin:0;font:14px sans-serif;background:#111;color:#eee}} img{{display:block}}
a{{color:#8cf}} .card{{display:inline-block;margin:8px;vertical-align:top}} .meta{{padding:4px 0}}</style>
</head><body>{body}</body></html>"""


class ViewServer:
    """Serves the hub's pictures. ``sources``: the latest heartbeat's per-source entries (id, state,
    fps...): read, never advanced, so viewing the page does not disturb the heartbeat's rates."""

    def __init__(self, hub: ViewHub, sources: Callable[[], list[Mapping[str, Any]]]):
        self._hub = hub
        self._sources = sources
        self._service: BoundedHttpService | None = None
        self.port: int | None = None

    def start(self) -> int:
        config = self._hub.config
        check_listen_host(config.address, "view.address", allow_remote=config.allow_remote)
        self._service = BoundedHttpService("view", self._app, REQUEST_TIMEOUT_S, config.max_connections)
        self.port = self._service.start(config.address, config.port)
        host = config.address if ":" not in config.address else f"[{config.address}]"
        log.info("live view on http://%s:%d/", host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop accepting; the streams end when the hub stops (which wakes them)."""
        if self._service is not None:
            self._service.stop()
            self._service = None

    # -- WSGI ----------------------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable) -> Iterator[bytes] | list[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET only\n")
        path = environ.get("PATH_INFO", "/")
        if path == "/":
            return self._index(start_response)
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "sources":
            return _plain(start_response, "404 Not Found", "not found\n")
        source_id = unquote(parts[1])
        known = {str(s.get("id")): s for s in self._sources()}
        if source_id not in known:
            return _plain(start_response, "404 Not Found", f"no source {source_id!r}\n")
        if len(parts) == 2:
            return self._source_page(start_response, known[source_id])
        if parts[2:] == ["stream.mjpg"]:
            return self._stream(start_response, source_id)
        if parts[2:] == ["snapshot.jpg"]:
            return self._snapshot(start_response, source_id)
        return _plain(start_response, "404 Not Found", "not found\n")

    def _index(self, start_response: Callable) -> list[bytes]:
        cards = []
        for source in self._sources():
            source_id = str(source.get("id"))
            link = f"sources/{quote(source_id, safe='')}"
            cards.append(
                f'<div class="card"><a href="{link}"><img src="{link}/snapshot.jpg" width="320" alt="{html.escape(source_id)}"></a>'
                f'<div class="meta"><a href="{link}">{html.escape(source_id)}</a> · {html.escape(str(source.get("state")))} · '
                f'{float(source.get("fps") or 0):.1f} fps · {int(source.get("frames_published") or 0)} published</div></div>'
            )
        body = "<h3 style='margin:8px'>trtstream live view</h3>" + ("".join(cards) or "<p style='margin:8px'>no sources yet</p>")
        return _html(start_response, _PAGE.format(title="trtstream live view", body=body))

    def _source_page(self, start_response: Callable, source: Mapping[str, Any]) -> list[bytes]:
        source_id = str(source.get("id"))
        quoted = quote(source_id, safe="")
        body = (f'<img id="stream" src="{quoted}/stream.mjpg" alt="{html.escape(source_id)}">'
                f'<div class="meta" style="margin:8px"><a href="../">all sources</a> · {html.escape(source_id)}</div>')  # fmt: skip
        return _html(start_response, _PAGE.format(title=f"{html.escape(source_id)} · trtstream", body=body))

    def _snapshot(self, start_response: Callable, source_id: str) -> list[bytes]:
        hub = self._hub
        with hub.watch(source_id):
            current = hub.latest(source_id)
            picture = hub.next_picture(source_id, current.seq if current else 0, SNAPSHOT_WAIT_S) or hub.latest(source_id)
        if picture is None:
            return _plain(start_response, "503 Service Unavailable", f"no picture of {source_id!r} yet\n", [("Retry-After", "1")])
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(picture.jpeg))), ("Cache-Control", "no-store")])
        return [picture.jpeg]

    def _stream(self, start_response: Callable, source_id: str) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"), ("Cache-Control", "no-store")])
        return self._pictures(source_id)

    def _pictures(self, source_id: str) -> Iterator[bytes]:
        """The stream's parts until the viewer goes (the write fails and wsgiref closes this generator)
        or the view stops. Registered as a watcher for exactly as long as the generator lives."""
        hub = self._hub
        with hub.watch(source_id):
            seen = 0
            while not hub.stopping:
                picture = hub.next_picture(source_id, seen, STREAM_IDLE_S)
                if picture is None:
                    continue
                seen = picture.seq
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(picture.jpeg)}\r\n\r\n").encode() + picture.jpeg + b"\r\n"


def _plain(start_response: Callable, status: str, text: str, headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


def _html(start_response: Callable, page: str) -> list[bytes]:
    body = page.encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return [body]
