"""CURVE encryption and client authentication for tcp endpoints; permissions for ipc socket files.

Results leave the box over tcp, often across a plant network; without CURVE anyone who can reach the
port reads every result (and thumbnail), and nothing proves to a subscriber that it is talking to the
real daemon. With CURVE (libzmq's elliptic-curve handshake) traffic is encrypted, the client pins the
server's public key, and the server's ZAP handler (pyzmq's ``ThreadAuthenticator``) admits only clients
whose public key is in an authorised directory (or any client holding the server key, with
``allow_any``: encryption without client authentication).

Key layout written by ``trtstream keys generate DIR``::

    DIR/server.key            server public key   (give to clients)          0644
    DIR/server.key_secret     server secret key   (daemon only)              0600
    DIR/client.key            client public key                              0644
    DIR/client.key_secret     client secret key   (give to that client only) 0600
    DIR/authorized_clients/client.key             the daemon's allow list

Run again with ``--client NAME`` to add a client: the server pair, once written, is never replaced.
Subscribers connect with ``trtstream subscribe --server-key DIR/server.key --client-key
DIR/NAME.key_secret`` or ``ResultSubscriber(curve_server_key=..., curve_client_keys=...)``.

CURVE options are applied per listener at bind time, so one socket can serve ``ipc://`` plainly
(file permissions protect it) and ``tcp://`` with CURVE: bind ipc first, then call
:func:`configure_curve`, then bind tcp (see :func:`bind_endpoints`).

The allow list is read when the authenticator starts and again by :func:`reload_authorized_clients`
(the daemon calls it on SIGHUP): a key file removed from the directory is refused from the next
handshake on, one added is admitted. ZeroMQ authenticates a connection once, at its handshake, so a
client connected before the reload keeps its connection until it reconnects.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import PublisherError, UserError

__all__ = [
    "KeyPair",
    "generate_keys",
    "load_secret",
    "load_public",
    "is_z85_key",
    "start_authenticator",
    "load_allow_list",
    "reload_authorized_clients",
    "configure_curve",
    "curve_client",
    "set_curve_client_keys",
    "bind_endpoints",
    "chmod_ipc",
    "add_keys_commands",
]

SERVER = "server"
AUTHORIZED_DIR = "authorized_clients"
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class KeyPair(NamedTuple):
    public: Path  # NAME.key
    secret: Path  # NAME.key_secret


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise UserError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")


def generate_keys(directory: Path, clients: Iterable[str] = ("client",), *, force: bool = False) -> dict[str, KeyPair]:
    """Create the server key pair unless ``directory`` has one, and one pair per client name; authorise
    every client (its public key goes into ``directory/authorized_clients``, the directory that
    ``[security.curve] authorized_clients`` names).

    An existing server key pair is kept byte for byte, ``force`` or not: every subscriber pins the
    server's public key, so replacing it would lock all of them out. ``force`` replaces only the named
    clients' pairs (and their allow-list entries). Keys are written into a private temporary directory
    (mode 0700) first, made 0600 (secret) and 0644 (public) there, then moved into place, so no secret
    is readable by others at any moment."""
    _require_curve()
    clients = list(clients)
    _check_client_names(clients)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = _existing_server_pair(directory)
    taken = [p for name in clients for p in _pair_paths(directory, name) if p.exists()]
    if taken and not force:
        raise UserError(f"keys: {taken[0]} already exists (--force replaces the named clients' keys; never the server key)")
    names = clients if server is not None else [SERVER, *clients]
    authorized = directory / AUTHORIZED_DIR
    authorized.mkdir(mode=0o755, exist_ok=True)
    result = {SERVER: server} if server is not None else {}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as staging:
        for name in names:
            public, secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            result[name] = KeyPair(directory / public.name, directory / secret.name)
            if name != SERVER:
                shutil.copy2(public, Path(staging) / f"{name}.authorized")
        for name in names:
            pair = result[name]
            os.replace(Path(staging) / pair.secret.name, pair.secret)
            os.replace(Path(staging) / pair.public.name, pair.public)
            if name != SERVER:
                os.replace(Path(staging) / f"{name}.authorized", authorized / pair.public.name)
    return result


def _check_client_names(clients: list[str]) -> None:
    for name in clients:
        if not name or name == SERVER or not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"keys: invalid client name {name!r} (letters, digits, '-', '_'; not 'server')")
    if len(set(clients)) != len(clients):
        raise UserError("keys: client names must be unique")


def _pair_paths(directory: Path, name: str) -> KeyPair:
    return KeyPair(directory / f"{name}.key", directory / f"{name}.key_secret")


def _existing_server_pair(directory: Path) -> KeyPair | None:
    """The server pair already in ``directory``, None when there is none; half a pair is refused rather
    than completed, since a new half would not match the other."""
    pair = _pair_paths(directory, SERVER)
    present = [p.exists() for p in pair]
    if all(present):
        return pair
    if any(present):
        missing = pair.public if not present[0] else pair.secret
        raise UserError(
            f"keys: {missing} is missing but its other half exists; restore it, or delete both server files "
            "to make a new server key (every subscriber then needs the new server.key)"
        )
    return None


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; refuses a secret readable by group or others.

    The file is parsed before its mode is judged, so a public ``.key`` given by mistake (mode 0644 by
    design) is reported as what it is rather than as an exposed secret."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UserError(f"cannot read secret key {path}: {exc.strerror}") from None
    public, secret = _load(path)
    if secret is None:
        raise UserError(f"{path} holds no secret key (is it the .key_secret file?)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"secret key {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return public, secret


def load_public(path: Path) -> bytes:
    return _load(Path(path))[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) through zmq.auth; a missing or malformed file is one line naming it
    (a malformed key would otherwise surface later as a bare EINVAL from setsockopt)."""
    if not path.is_file():
        raise UserError(f"cannot load CURVE key {path}: no such file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise UserError(f"cannot load CURVE key {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise UserError(f"cannot load CURVE key {path}: no public-key line (not a file from `trtstream keys generate`)") from None
    if not is_z85_key(public) or (secret is not None and not is_z85_key(secret)):
        raise UserError(f"cannot load CURVE key {path}: a key in it is not 40 Z85 characters")
    return public, secret


def is_z85_key(key: bytes | str) -> bool:
    """Whether ``key`` is a CURVE key in its Z85 text form (40 characters), as in the key files."""
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    return _Z85_KEY.fullmatch(text) is not None


def start_authenticator(
    context: zmq.Context, authorized_clients_dir: Path | None, *, allow_any: bool = False
) -> ThreadAuthenticator:
    """Start the ZAP handler for ``context`` (one per context) with its client allow list.

    :func:`reload_authorized_clients` re-reads the directory (the daemon does on SIGHUP); ``stop()`` at exit."""
    _require_curve()
    if allow_any == (authorized_clients_dir is not None):
        raise UserError("CURVE: give either a directory of authorised client keys or allow_any, not both or neither")
    directory = None if allow_any else Path(authorized_clients_dir)
    if directory is not None:
        load_allow_list(directory)  # an unusable key file is one line now, not a silently empty allow list
    auth = ThreadAuthenticator(context, log=logging.getLogger("trtstream.auth"))
    try:
        auth.start()
    except zmq.ZMQError as exc:
        raise UserError(f"CURVE: cannot start the authenticator: {exc.strerror} (one per context)") from None
    auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY if directory is None else str(directory))
    if directory is not None:
        with _registry_lock:
            _allow_lists[auth] = directory
    return auth


# authenticators started with a directory, for reload_authorized_clients (weak: a stopped and dropped
# authenticator leaves by itself)
_allow_lists: "weakref.WeakKeyDictionary[ThreadAuthenticator, Path]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def load_allow_list(directory: Path) -> set[bytes]:
    """The public keys of ``directory/*.key`` (the files pyzmq's authenticator reads); UserError naming
    the directory or the first file that cannot be used."""
    directory = Path(directory)
    try:
        if not directory.is_dir():
            raise UserError(f"CURVE: authorised clients directory {directory} does not exist")
        files = sorted(directory.glob("*.key"))
    except OSError as exc:
        raise UserError(f"CURVE: cannot read authorised clients directory {directory}: {exc.strerror or exc}") from None
    return {load_public(path) for path in files}


def reload_authorized_clients() -> list[tuple[Path, int, int, int]]:
    """Re-read the allow list of every running authenticator of this process that was started with a
    directory, and apply it to new handshakes. Every directory is read before any is applied: a
    UserError (an unreadable directory or key file) leaves every allow list as it was. Returns
    (directory, keys, added, removed) per authenticator."""
    with _registry_lock:
        running = [(auth, directory) for auth, directory in _allow_lists.items() if auth.is_alive()]
    loaded = [(auth, directory, load_allow_list(directory)) for auth, directory in running]
    report = []
    for auth, directory, keys in loaded:
        before = set(auth.certs.get("*", {}))
        auth.configure_curve(domain="*", location=str(directory))
        report.append((directory, len(keys), len(keys - before), len(before - keys)))
    return report


def configure_curve(
    socket: zmq.Socket,
    server_secret_file: Path,
    authorized_clients_dir: Path | None = None,
    *,
    allow_any: bool = False,
    authenticator: ThreadAuthenticator | None = None,
) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server for every endpoint bound after this call.

    Starts an authenticator for the socket's context unless ``authenticator`` (already started for that
    context) is given; returns the authenticator, which the caller stops at exit. Call before bind."""
    public, secret = load_secret(server_secret_file)
    if authenticator is None:
        authenticator = start_authenticator(socket.context, authorized_clients_dir, allow_any=allow_any)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator


def curve_client(socket: zmq.Socket, client_secret_file: Path, server_public_file: Path) -> None:
    """Make ``socket`` a CURVE client that trusts only the given server key. Call before connect."""
    public, secret = load_secret(client_secret_file)
    set_curve_client_keys(socket, load_public(server_public_file), public, secret)


def set_curve_client_keys(socket: zmq.Socket, server_public: bytes, client_public: bytes, client_secret: bytes) -> None:
    """Make ``socket`` a CURVE client with keys already loaded (Z85): the one place the three options are
    set, after checking this libzmq has CURVE at all (else setsockopt fails with a bare EINVAL)."""
    _require_curve()
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret


def chmod_ipc(endpoint: str, mode: int) -> None:
    """Set the mode of an ``ipc://`` socket file (right after bind); other endpoints are left alone."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        os.chmod(endpoint[len("ipc://") :], mode)


def bind_endpoints(
    socket: zmq.Socket,
    endpoints: Iterable[str],
    *,
    ipc_mode: int = 0o660,
    curve: tuple[Path, Path | None, bool] | None = None,
) -> ThreadAuthenticator | None:
    """Bind ``endpoints`` with ipc/inproc plain (mode ``ipc_mode``) and tcp under CURVE when ``curve``
    = (server secret file, authorised clients dir, allow_any) is given. Returns the authenticator (stop
    it when the socket closes), or None. A failed bind raises PublisherError naming the endpoint; bad
    keys raise UserError."""
    endpoints = list(endpoints)
    local = [e for e in endpoints if not e.startswith("tcp://")]
    remote = [e for e in endpoints if e.startswith("tcp://")]
    for endpoint in local:
        _bind(socket, endpoint)
        chmod_ipc(endpoint, ipc_mode)
    authenticator = None
    if curve is not None and remote:
        secret_file, authorized, allow_any = curve
        authenticator = configure_curve(socket, secret_file, authorized, allow_any=allow_any)
    try:
        for endpoint in remote:
            _bind(socket, endpoint)
    except PublisherError:
        if authenticator is not None:
            authenticator.stop()
        raise
    return authenticator


def _bind(socket: zmq.Socket, endpoint: str) -> None:
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise PublisherError(f"publisher.endpoints: cannot bind {endpoint}: {exc.strerror}") from None


def cmd_keys_generate(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    kept = _existing_server_pair(directory) if directory.is_dir() else None
    pairs = generate_keys(directory, args.client or ["client"], force=args.force)
    state = "kept, unchanged" if kept is not None else "new"
    print(f"server public key:  {pairs[SERVER].public}   ({state}; every subscriber's --server-key)")
    print(f"server secret key:  {pairs[SERVER].secret}   ({state}; daemon only, mode 0600)")
    for name, pair in pairs.items():
        if name != SERVER:
            print(f"client {name!r}: {pair.secret} (that subscriber's --client-key only), authorised in {directory / AUTHORIZED_DIR}")
    if kept is not None:
        # a running daemon re-reads the allow list on SIGHUP (reload_authorized_clients)
        print("reload the daemon (systemctl reload trtstream, or SIGHUP) to admit the new clients")
    return 0


def add_keys_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``keys generate`` on the main CLI's subparsers; handlers return an exit code."""
    keys = subparsers.add_parser("keys", help="CURVE keys for encrypted, authenticated tcp endpoints")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    generate = actions.add_parser(
        "generate",
        help="create the server key pair (once) and client key pairs, and authorise the clients",
        description="Write DIR/server.key(_secret) unless DIR has them, one DIR/NAME.key(_secret) per client "
        f"and DIR/{AUTHORIZED_DIR}/NAME.key. Secret files are mode 0600. An existing server key pair is "
        "never replaced (every subscriber pins it): run again with --client NAME to add a client; delete "
        "both server files to make a new server key.",
    )
    generate.add_argument("directory", metavar="DIR")
    generate.add_argument("--client", action="append", metavar="NAME", help="client key name (repeatable; default 'client')")
    generate.add_argument(
        "--force",
        action="store_true",
        help=f"replace the key pairs of the clients named with --client (DIR/NAME.key, DIR/NAME.key_secret, "
        f"DIR/{AUTHORIZED_DIR}/NAME.key) when they exist; never the server key pair",
    )
    generate.set_defaults(handler=cmd_keys_generate)
    return keys
