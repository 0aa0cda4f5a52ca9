"""The local control socket: ``trtstream status`` and the latest result per source for late subscribers.

A ZeroMQ REP socket, by default ``ipc://`` under systemd's ``$RUNTIME_DIRECTORY`` (else /run/trtstream,
else ``$XDG_RUNTIME_DIR/trtstream``). Access control is the file system: the socket file gets mode
0600 or 0660 right after bind, inside a directory only the daemon's user and group can enter (the units
set ``RuntimeDirectoryMode=0750``), so the short window between bind and chmod exposes nothing. A tcp
endpoint must be loopback unless explicitly allowed, and an abstract ``ipc://@name`` is refused (it has
no file, hence no permissions).

The server thread creates and owns its socket (pyzmq sockets are not thread-safe) and polls with a
timeout, so ``stop()`` returns promptly. Requests and replies are small JSON objects; every request gets
exactly one reply (REP's strict send/receive alternation), errors included, so one bad client cannot
wedge the socket. Replies: ``{"ok": true, "cmd": ..., "result": ...}`` or ``{"ok": false, "error": ...}``.

Hostile input: a request over ``MAX_REQUEST_BYTES`` is dropped by libzmq (``ZMQ_MAXMSGSIZE``: the peer
is disconnected); one that cannot be parsed (not JSON, nested too deeply, a number Python refuses to
convert) gets an error reply; anything else going wrong while answering gets an error reply too, and a
socket that breaks is re-created. The thread ends only when ``stop()`` is called.

The socket's directory must be private: a real directory (not a symlink), owned by this user or root,
not writable by group or others. The daemon refuses any other (one line naming it) rather than bind
where someone else could replace its socket; a directory it creates under a world-writable parent such
as /tmp is made 0700, elsewhere 0750. ``query`` applies the same rule before it connects, except that a
directory owned by another user is accepted where only that user or root could have created it (the
group members' case: /run/trtstream, owner trtstream, mode 0750).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from .errors import TrtstreamError, UserError
from .ipcpath import ipc_path, refuse_if_in_use
from .netaddr import check_listen_host
from .redact import mask_text

__all__ = [
    "LatestResults",
    "ControlServer",
    "ControlUnavailable",
    "default_control_endpoint",
    "ipc_path",
    "query",
    "add_status_command",
]

log = logging.getLogger("trtstream.control")

SOCKET_NAME = "control.ipc"
MAX_REQUEST_BYTES = 64 * 1024  # requests are tiny; a larger one is a confused or hostile client


class ControlUnavailable(UserError):
    """The daemon's control socket cannot be reached (not running, no permission, no answer)."""


SYSTEM_RUN_DIR = Path("/run/trtstream")


def default_control_endpoint(
    environ: Mapping[str, str] | None = None, instance: str | None = None, *, run_dir: Path = SYSTEM_RUN_DIR
) -> str:
    """Where the daemon listens and ``trtstream status`` looks by default.

    ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``; the first entry if several), else
    /run/trtstream[/INSTANCE] when it exists, else ``$XDG_RUNTIME_DIR/trtstream``, else /tmp/trtstream-UID."""
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY")
    if runtime:
        return f"ipc://{runtime.split(':')[0]}/{SOCKET_NAME}"
    system = run_dir / instance if instance else run_dir
    if system.is_dir() or instance:
        return f"ipc://{system}/{SOCKET_NAME}"
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return f"ipc://{xdg}/trtstream/{SOCKET_NAME}"
    return f"ipc:///tmp/trtstream-{os.getuid()}/{SOCKET_NAME}"


class LatestResults:
    """The newest result header per source, for a subscriber that joins late.

    ``update`` is called on the publisher thread with the header it just sent; the store keeps only the
    newest per source, so it is bounded by the number of sources. The header is kept by reference: the
    caller hands it over and must not mutate it afterwards (the publisher builds a new dict per message).
    """

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, source_id: str, header: dict[str, Any]) -> None:
        with self._lock:
            self._latest[source_id] = header

    def get(self, source_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(source_id)

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._latest)


Handler = Callable[[dict[str, Any]], Any]


class ControlServer:
    """Serves the control socket on a thread named ``control``.

    ``status`` returns what ``heartbeat()`` returns (pass the last heartbeat body the publisher built,
    not a fresh one: building one advances the heartbeat's fps meters). ``configure_socket`` runs on the
    server thread before bind (e.g. ``security.configure_curve`` for an allowed tcp endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        heartbeat: Callable[[], Mapping[str, Any] | None],
        latest: LatestResults,
        *,
        mode: int = 0o660,
        allow_remote: bool = False,
        configure_socket: Callable[[zmq.Socket], None] | None = None,
        context: zmq.Context | None = None,
        poll_ms: int = 100,
    ):
        if mode not in (0o600, 0o660):
            raise UserError(f"control.mode: must be 0600 or 0660 (got {mode:04o})")
        _check_endpoint(endpoint, allow_remote)
        self.endpoint = endpoint
        self._mode = mode
        self._configure = configure_socket
        self._context = context or zmq.Context.instance()
        self._poll_ms = poll_ms
        self._handlers: dict[str, Handler] = {
            "status": lambda _request: heartbeat(),
            "latest": lambda request: _latest_reply(latest, request),
        }
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Bind (on the server thread) and return once serving; raises UserError when it cannot bind."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise UserError(f"control socket {self.endpoint} did not start within {timeout:.0f}s")
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _bind(self) -> zmq.Socket:
        path = ipc_path(self.endpoint)
        if path is not None:
            _prepare_socket_dir(path.parent)
            refuse_if_in_use(path, "control")  # another daemon's live socket: never take it over
        sock = self._context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        sock.setsockopt(zmq.SNDTIMEO, 1000)  # a reply to a vanished peer must not block the thread
        try:
            if self._configure is not None:
                self._configure(sock)
            sock.bind(self.endpoint)
            if path is not None:
                os.chmod(path, self._mode)
        except (zmq.ZMQError, OSError) as exc:
            sock.close(linger=0)
            raise UserError(f"control: cannot bind {self.endpoint}: {getattr(exc, 'strerror', None) or exc}") from None
        return sock

    def _run(self) -> None:
        try:
            sock = self._bind()
        except Exception as exc:  # noqa: BLE001 - UserError from bind; a ZMQError from socket() (EMFILE) too
            # ours (a UserError from bind, any TrtstreamError a configure_socket hook raised) is kept as it is
            self._start_error = exc if isinstance(exc, TrtstreamError) else UserError(f"control: cannot open {self.endpoint}: {exc}")
            self._started.set()
            return
        log.info("control socket on %s (mode %04o)", self.endpoint, self._mode)
        self._started.set()
        try:
            while not self._stop.is_set():
                try:
                    self._serve(sock)
                except Exception as exc:  # noqa: BLE001 - the control thread must outlive any one failure
                    # REP must alternate recv/send; after a failed send it can only be replaced
                    log.warning("control socket error (%s: %s); re-creating it", type(exc).__name__, exc)
                    sock.close(linger=0)
                    sock = None
                    sock = self._rebind()
                    if sock is None:
                        return  # stopped meanwhile; the socket file is no longer ours to remove
        finally:
            if sock is not None:
                sock.close(linger=0)
                path = ipc_path(self.endpoint)
                if path is not None:
                    path.unlink(missing_ok=True)

    def _rebind(self) -> zmq.Socket | None:
        """Bind again after the socket broke, retrying every second until it works or ``stop()``."""
        while True:
            try:
                sock = self._bind()
            except Exception as exc:  # noqa: BLE001 - UserError from bind, ZMQError (e.g. EMFILE) from socket()
                log.error("control: %s; retrying", str(exc).removeprefix("control: "))
            else:
                log.info("control socket on %s again", self.endpoint)
                return sock
            if self._stop.wait(1.0):
                return None

    def _serve(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(self._poll_ms):
                continue
            parts = sock.recv_multipart()
            sock.send(self.reply_bytes(parts))

    def reply_bytes(self, parts: list[bytes]) -> bytes:
        """The encoded reply to one request; never raises, so REP's next send always happens."""
        try:
            return json.dumps(self.handle(parts), default=str).encode("utf-8")
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be encoded
            log.warning("control: cannot answer a request: %s: %s", type(exc).__name__, exc)
            return json.dumps(_error(f"internal error: {type(exc).__name__}")).encode("utf-8")

    def handle(self, parts: list[bytes]) -> dict[str, Any]:
        """One request (the message parts as received) to its reply; never raises."""
        if len(parts) != 1:
            return _error("send one JSON object per request")
        try:
            request = json.loads(parts[0])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(f"request is not JSON: {exc}")
        except RecursionError:
            return _error("request is nested too deeply")
        except ValueError:  # valid JSON Python will not convert, e.g. an integer of more than 4300 digits
            return _error("request holds a value that cannot be converted (a number too long?)")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error('request must be an object with a "cmd" string, e.g. {"cmd": "status"}')
        cmd = request["cmd"]
        handler = self._handlers.get(cmd)
        if handler is None:
            return _error(f"unknown command {cmd!r}; known: {', '.join(sorted(self._handlers))}")
        try:
            return {"ok": True, "cmd": cmd, "result": handler(request)}
        except _RequestError as exc:
            return _error(str(exc))
        except Exception as exc:
            log.exception("control: %s failed", cmd)
            return _error(mask_text(f"{cmd} failed: {type(exc).__name__}: {exc}"))


class _RequestError(Exception):
    """A well-formed request that cannot be answered (unknown source, ...)."""


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _latest_reply(latest: LatestResults, request: dict[str, Any]) -> Any:
    source = request.get("source")
    if source is None:
        return latest.all()
    if not isinstance(source, str):
        raise _RequestError('"source" must be a source id string')
    header = latest.get(source)
    if header is None:
        raise _RequestError(f"no result yet for source {source!r}")
    return header


def _check_endpoint(endpoint: str, allow_remote: bool) -> None:
    if endpoint.startswith("ipc://@"):
        raise UserError(f"control.endpoint: {endpoint} is an abstract socket: it has no file permissions; use a path")
    if endpoint.startswith("ipc://"):
        return
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
        check_listen_host(host, "control.endpoint", allow_remote=allow_remote)
        return
    raise UserError(f"control.endpoint: {endpoint!r} must be ipc:///path or tcp://127.0.0.1:PORT")


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def _prepare_socket_dir(directory: Path) -> None:
    """Create the socket's directory if needed (0700 under a world-writable parent such as /tmp, else
    0750 so the daemon's group can reach the socket) and check it is private (see the module doc);
    UserError naming it otherwise. A directory someone else made first fails the check, whoever won
    the race to create it."""
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shared_parent = _writable_by_others(parent.stat().st_mode)
        directory.mkdir(mode=0o700 if shared_parent else 0o750, exist_ok=True)
    except FileExistsError:
        pass  # a file or a symlink: the check below names it
    except OSError as exc:
        raise UserError(f"control: cannot create {directory}: {exc.strerror}") from None
    try:
        problem = _socket_dir_problem(directory, strict_owner=True)
    except OSError as exc:
        raise UserError(f"control: cannot use {directory}: {exc.strerror}") from None
    if problem is not None:
        raise UserError(f"control: refusing {directory}: {problem}")


def _socket_dir_problem(directory: Path, *, strict_owner: bool) -> str | None:
    """Why ``directory`` cannot be trusted to hold a control socket, or None. ``strict_owner`` (the
    daemon): only this user or root may own it. Otherwise (a client) another owner is accepted unless
    the parent is writable by others, i.e. unless anyone could have created the directory."""
    st = os.lstat(directory)  # OSError for the caller to word
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link (someone could point it elsewhere); remove it"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    mode = stat.S_IMODE(st.st_mode)
    if _writable_by_others(mode):
        return f"it is writable by group or others (mode {mode:04o}), so they could replace the socket; chmod 750 it"
    if st.st_uid not in (os.geteuid(), 0):
        if strict_owner or _writable_by_others(os.stat(directory.parent).st_mode):
            return f"it belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); someone else may have planted it: remove it"
    return None


def query(endpoint: str, request: Mapping[str, Any], timeout: float = 2.0, *, context: zmq.Context | None = None) -> dict[str, Any]:
    """Send one request to a daemon's control socket and return its reply.

    Never hangs: REQ with RCVTIMEO/SNDTIMEO and LINGER 0. A missing or unreachable ipc socket is
    reported at once with a one-line :class:`ControlUnavailable` instead of waiting for the timeout."""
    path = ipc_path(endpoint)
    if path is not None:
        _check_socket_path(path)
    context = context or zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout * 1000)))
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(dict(request)).encode("utf-8"))
        raw = sock.recv()
    except zmq.Again:
        raise ControlUnavailable(f"no answer from {endpoint} within {timeout:g}s: trtstream is not running or not responding") from None
    except zmq.ZMQError as exc:
        raise ControlUnavailable(f"cannot reach {endpoint}: {exc.strerror}") from None
    finally:
        sock.close(linger=0)
    try:
        reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlUnavailable(f"{endpoint} answered something that is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlUnavailable(f"{endpoint} answered {type(reply).__name__}, not an object")
    return reply


def _check_socket_path(path: Path) -> None:
    """Before connecting to an ipc control socket: it exists, this user may use it, and its directory is
    one the daemon would have bound in (see the module doc). Every failure is one ControlUnavailable line."""
    denied = "permission denied (run as root or join the daemon's group)"
    try:
        problem = _socket_dir_problem(path.parent, strict_owner=False)
        if problem is None:
            os.stat(path)
    except FileNotFoundError:
        raise ControlUnavailable(f"trtstream is not running: no control socket at {path}") from None
    except PermissionError:
        raise ControlUnavailable(f"cannot use {path}: {denied}") from None
    except OSError as exc:
        raise ControlUnavailable(f"cannot use {path}: {exc.strerror or exc}") from None
    if problem is not None:
        raise ControlUnavailable(f"not using {path}: {path.parent}: {problem}")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ControlUnavailable(f"cannot use {path}: {denied}")


def cmd_status(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or default_control_endpoint(instance=args.instance)
    request: dict[str, Any] = {"cmd": "latest", "source": args.latest} if args.latest else {"cmd": "status"}
    try:
        reply = query(endpoint, request, args.timeout)
    except ControlUnavailable as exc:
        instances = sorted(p.parent.name for p in SYSTEM_RUN_DIR.glob(f"*/{SOCKET_NAME}"))
        if args.endpoint or args.instance or not instances:
            raise
        raise ControlUnavailable(f"{exc}; running instances: {', '.join(instances)} (use --instance NAME)") from None
    if not reply.get("ok"):
        raise UserError(f"{endpoint}: {reply.get('error', 'request failed')}")
    print(json.dumps(reply.get("result"), indent=None if args.compact else 2, ensure_ascii=False))
    return 0


def add_status_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``status`` on the main CLI's subparsers; its handler is ``args.handler(args) -> exit code``."""
    parser = subparsers.add_parser(
        "status",
        help="ask a running daemon for its heartbeat (or the latest result of a source) over the control socket",
        description="Print the running daemon's heartbeat as JSON, or with --latest the newest result header "
        "of one source. Exits 1 at once with one line when no daemon is listening.",
    )
    parser.add_argument("--endpoint", help="control socket (default: $RUNTIME_DIRECTORY, /run/trtstream[/INSTANCE], XDG runtime dir)")
    parser.add_argument("--instance", help="template instance name: /run/trtstream/INSTANCE/control.ipc")
    parser.add_argument("--latest", metavar="SOURCE", help="print the latest result header of this source instead")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
    parser.add_argument("--compact", action="store_true", help="one line of JSON")
    parser.set_defaults(handler=cmd_status)
    return parser
