"""A small HTTP server that a hostile or stalled client cannot exhaust, for WSGI apps (metrics, the view).

The standard library's servers wait for a request forever: half-sent requests held a thread and a
descriptor each until the process ran out of descriptors (issue 11). Here a connection must deliver its
request line and headers within ``request_timeout_s``, no single read or write may stall that long (a
viewer that stops reading its MJPEG stream is cut off after it, and its thread ends), and at most
``max_connections`` are served at once: one more is closed without a thread.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import UserError

__all__ = ["BoundedHttpService", "make_bounded_server"]

log = logging.getLogger("trtstream.http")


class _Handler(WSGIRequestHandler):
    """One connection: the request must arrive within ``deadline_s``; each read and write may stall at
    most ``timeout`` seconds (StreamRequestHandler applies it to the socket); nothing is logged."""

    deadline_s = 5.0
    timeout = 5.0

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(self.deadline_s, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        try:  # wakes the handler's blocked read with EOF; it then ends and closes the connection
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # request line and headers are in: the deadline has done its job
        self._deadline.cancel()
        return parsed

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the peer or the deadline closed it first
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> "_DebugLog":
        """wsgiref prints an app's or a write's error with its traceback to this: a viewer whose stream
        write timed out is routine, not something for the journal."""
        return _DebugLog(self.server)


class _DebugLog:
    """A file-like sink for wsgiref's error output, into the debug log."""

    def __init__(self, server: Any):
        self._role = getattr(server, "role", "http")

    def write(self, text: str) -> None:
        if text.strip():
            log.debug("%s: %s", self._role, text.rstrip())

    def flush(self) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """Thread per connection, at most ``slots`` at once: one more is closed without a thread."""

    daemon_threads = True
    slots: threading.BoundedSemaphore
    role = "http"

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("%s: connection from %s ended with an error", self.role, client_address, exc_info=True)


def make_bounded_server(address: str, port: int, app: Callable[..., Any], request_timeout_s: float, max_connections: int,
                        role: str) -> WSGIServer:
    """A WSGI server on ``address:port`` (IPv4 or IPv6; port 0 picks a free one), not yet serving:
    call ``serve_forever`` on a thread of its own. ``role`` names it in debug logs. Raises OSError."""
    family, _, _, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    handler = type("Handler", (_Handler,), {"deadline_s": request_timeout_s, "timeout": request_timeout_s})
    server_class = type("Server", (_Server,), {"address_family": family, "slots": threading.BoundedSemaphore(max_connections),
                                               "role": role})
    return make_server(sockaddr[0], port, app, server_class, handler_class=handler)


class BoundedHttpService:
    """A :func:`make_bounded_server` serving ``app`` on a thread of its own (``<role>-http``)."""

    def __init__(self, role: str, app: Callable[..., Any], request_timeout_s: float, max_connections: int):
        self._role, self._app = role, app
        self._request_timeout_s, self._max_connections = request_timeout_s, max_connections
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self, address: str, port: int) -> int:
        """Listen and serve; the bound port (0 picks one). A port in use is a UserError naming the role."""
        try:
            self._server = make_bounded_server(address, port, self._app, self._request_timeout_s, self._max_connections, self._role)
        except OSError as exc:
            raise UserError(f"{self._role}: cannot listen on {address}:{port}: {exc.strerror or exc}") from None
        # a 0.1 s poll: stop() waits for serve_forever to notice, and the daemon's exit waits for stop()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{self._role}-http", daemon=True)
        self._thread.start()
        self.port = self._server.server_address[1]
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5.0)
            self._server = self._thread = None
