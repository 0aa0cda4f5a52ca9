"""CURVE (daemon/security.py) with real tcp loopback sockets and pyzmq's ZAP authenticator.

Each test has its own context (one authenticator per context) and closes everything with linger 0.
"Receives nothing" is established on events, not sleeps: the socket monitor reports the rejected
handshake, then messages that the authorised subscriber does receive are published, and only then are
the others polled with a short deadline.
"""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from daemon.errors import PublisherError, UserError
from daemon.security import (
    add_keys_commands,
    bind_endpoints,
    configure_curve,
    curve_client,
    generate_keys,
    load_secret,
    reload_authorized_clients,
)

from .conftest import REPO


@pytest.fixture
def keys(tmp_path):
    return generate_keys(tmp_path / "keys", ["viewer"])


@pytest.fixture
def intruder_keys(tmp_path):
    """A valid key pair the daemon has never authorised."""
    return generate_keys(tmp_path / "other", ["intruder"])["intruder"]


class Harness:
    """One context per test, with every socket and authenticator it made, closed at the end."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.auths: list = []

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def subscriber(self, endpoint: str, secret=None, server_public=None, *, monitor: list | None = None) -> zmq.Socket:
        """A SUB socket; with ``monitor`` (a list), its monitor socket is started before connecting,
        so no handshake event can be missed, and appended to the list."""
        sub = self.socket(zmq.SUB)
        if secret is not None:
            curve_client(sub, secret, server_public)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if monitor is not None:
            monitor.append(sub.get_monitor_socket())
            self.sockets.insert(0, monitor[-1])
        sub.connect(endpoint)
        return sub

    def close(self) -> None:
        for auth in self.auths:
            auth.stop()
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def zmq_env():
    harness = Harness()
    yield harness
    harness.close()


def publish_until_received(pub: zmq.Socket, sub: zmq.Socket, timeout: float = 10.0) -> bytes:
    """PUB/SUB has no delivery on connect (slow joiner): publish until the subscriber gets one."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        pub.send(b"warm-up %d" % n)
        n += 1
        if sub.poll(50):
            return sub.recv()
    raise AssertionError(f"authorised subscriber received nothing within {timeout}s")


def receive(sock: zmq.Socket, timeout: float = 10.0) -> bytes:
    """The next message that is not a warm-up left in flight by publish_until_received."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if sock.poll(int(remaining * 1000) + 1):
            message = sock.recv()
            if not message.startswith(b"warm-up"):
                return message
    raise AssertionError(f"nothing but warm-ups within {timeout}s")


def test_generate_keys_layout_and_modes(tmp_path):
    directory = tmp_path / "keys"
    pairs = generate_keys(directory, ["viewer", "recorder"])
    assert set(pairs) == {"server", "viewer", "recorder"}
    for pair in pairs.values():
        assert stat.S_IMODE(pair.secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert sorted(p.name for p in (directory / "authorized_clients").iterdir()) == ["recorder.key", "viewer.key"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not [p for p in directory.iterdir() if p.name.startswith(".keys-")], "staging directory left behind"


def test_existing_keys_are_kept_and_force_replaces_only_the_named_clients(tmp_path):
    first = generate_keys(tmp_path / "k", ["viewer"])
    server = {p: p.read_bytes() for p in first["server"]}
    viewer = {p: p.read_bytes() for p in first["viewer"]}
    with pytest.raises(UserError, match="viewer.key already exists .*--force replaces the named clients' keys; never the server key"):
        generate_keys(tmp_path / "k", ["viewer"])
    assert {p: p.read_bytes() for p in first["viewer"]} == viewer
    again = generate_keys(tmp_path / "k", ["viewer"], force=True)
    assert {p: p.read_bytes() for p in first["server"]} == server, "--force never replaces the server key pair"
    assert again["server"] == first["server"]
    assert all(p.read_bytes() != viewer[p] for p in first["viewer"]), "the named client's pair is new"
    assert (tmp_path / "k" / "authorized_clients" / "viewer.key").read_bytes() == first["viewer"].public.read_bytes()


def test_adding_a_client_keeps_the_server_key_byte_identical(tmp_path):
    first = generate_keys(tmp_path / "k", ["viewer"])
    server = {p: p.read_bytes() for p in first["server"]}
    added = generate_keys(tmp_path / "k", ["recorder"])
    assert set(added) == {"server", "recorder"}
    assert {p: p.read_bytes() for p in first["server"]} == server
    assert sorted(p.name for p in (tmp_path / "k" / "authorized_clients").iterdir()) == ["recorder.key", "viewer.key"]
    assert (tmp_path / "k" / "authorized_clients" / "recorder.key").read_bytes() == added["recorder"].public.read_bytes()
    assert stat.S_IMODE(added["recorder"].secret.stat().st_mode) == 0o600


def test_half_a_server_pair_is_refused_not_completed(tmp_path):
    first = generate_keys(tmp_path / "k", ["viewer"])
    first["server"].secret.unlink()
    with pytest.raises(UserError, match="server.key_secret is missing but its other half exists"):
        generate_keys(tmp_path / "k", ["recorder"])
    assert not (tmp_path / "k" / "recorder.key").exists()


def test_a_readable_secret_is_refused(keys):
    keys["server"].secret.chmod(0o644)
    with pytest.raises(UserError, match="accessible by others .*0644.*chmod 600"):
        load_secret(keys["server"].secret)


def test_only_authorised_clients_receive(zmq_env, keys, intruder_keys):
    pub = zmq_env.socket(zmq.PUB)
    zmq_env.auths.append(configure_curve(pub, keys["server"].secret, keys["server"].secret.parent / "authorized_clients"))
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    server_public = keys["server"].public
    viewer = zmq_env.subscriber(endpoint, keys["viewer"].secret, server_public)
    monitors: list[zmq.Socket] = []
    intruder = zmq_env.subscriber(endpoint, intruder_keys.secret, server_public, monitor=monitors)
    plaintext = zmq_env.subscriber(endpoint, monitor=monitors)

    publish_until_received(pub, viewer)
    # wait for the rejections (events), not for time to pass: the ZAP handler refuses the intruder's
    # key; a client without CURVE fails the handshake (mechanism mismatch)
    assert _saw(monitors[0], zmq.EVENT_HANDSHAKE_FAILED_AUTH, 10.0), "the unauthorised client was never rejected"
    assert _saw(monitors[1], zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 10.0), "the plaintext client was never rejected"

    for i in range(5):
        pub.send(b"result %d" % i)
    assert [receive(viewer) for _ in range(5)] == [b"result %d" % i for i in range(5)]
    assert intruder.poll(300) == 0, "an unauthorised client received a message"
    assert plaintext.poll(300) == 0, "a client without CURVE received a message"


def _saw(monitor: zmq.Socket, wanted: int, timeout: float) -> bool:
    """Whether the monitor socket reports ``wanted`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if monitor.poll(50) and recv_monitor_message(monitor)["event"] == wanted:
            return True
    return False


def test_client_pinning_the_wrong_server_key_receives_nothing(zmq_env, keys, intruder_keys):
    pub = zmq_env.socket(zmq.PUB)
    zmq_env.auths.append(configure_curve(pub, keys["server"].secret, keys["server"].secret.parent / "authorized_clients"))
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    viewer = zmq_env.subscriber(endpoint, keys["viewer"].secret, keys["server"].public)
    monitors: list[zmq.Socket] = []
    fooled = zmq_env.subscriber(endpoint, keys["viewer"].secret, intruder_keys.public, monitor=monitors)  # not our server's key
    publish_until_received(pub, viewer)
    assert _saw(monitors[0], zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 10.0), "the handshake with a wrong server key must fail"
    pub.send(b"secret result")
    assert receive(viewer) == b"secret result"
    assert fooled.poll(300) == 0


def test_allow_any_encrypts_without_authenticating(zmq_env, keys, intruder_keys):
    pub = zmq_env.socket(zmq.PUB)
    zmq_env.auths.append(configure_curve(pub, keys["server"].secret, allow_any=True))
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    anyone = zmq_env.subscriber(f"tcp://127.0.0.1:{port}", intruder_keys.secret, keys["server"].public)
    assert publish_until_received(pub, anyone).startswith(b"warm-up")


def test_ipc_stays_plain_while_tcp_needs_curve(zmq_env, keys, tmp_path):
    """CURVE options are taken per listener at bind time: one PUB serves a local ipc subscriber without
    keys (file permissions protect it) and tcp subscribers only with keys."""
    pub = zmq_env.socket(zmq.PUB)
    ipc = f"ipc://{tmp_path}/results.ipc"
    # An ephemeral port chosen by the bind itself (a probe socket's port may not be free again yet:
    # ZeroMQ closes sockets asynchronously).
    auth = bind_endpoints(
        pub, [ipc, "tcp://127.0.0.1:*"], ipc_mode=0o660, curve=(keys["server"].secret, keys["server"].secret.parent / "authorized_clients", False)
    )
    tcp = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    zmq_env.auths.append(auth)
    assert stat.S_IMODE((tmp_path / "results.ipc").stat().st_mode) == 0o660
    local = zmq_env.subscriber(ipc)
    viewer = zmq_env.subscriber(tcp, keys["viewer"].secret, keys["server"].public)
    monitors: list[zmq.Socket] = []
    plaintext_tcp = zmq_env.subscriber(tcp, monitor=monitors)
    publish_until_received(pub, local)
    publish_until_received(pub, viewer)
    assert _saw(monitors[0], zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 10.0)
    pub.send(b"frame")
    assert receive(local) == b"frame" and receive(viewer) == b"frame"
    assert plaintext_tcp.poll(300) == 0


def test_bind_failure_names_the_endpoint(zmq_env, keys):
    taken = zmq_env.socket(zmq.PUB)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    pub = zmq_env.socket(zmq.PUB)
    with pytest.raises(PublisherError, match=f"cannot bind tcp://127.0.0.1:{port}: Address already in use"):
        bind_endpoints(pub, [f"tcp://127.0.0.1:{port}"], curve=(keys["server"].secret, None, True))


def keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtstream")
    add_keys_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_keys_generate_command(tmp_path, capsys):
    args = keys_parser().parse_args(["keys", "generate", str(tmp_path / "k"), "--client", "viewer"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "server.key" in out and "viewer.key_secret" in out
    with pytest.raises(UserError, match="already exists"):
        args.handler(args)
    with pytest.raises(UserError, match="invalid client name"):
        bad = keys_parser().parse_args(["keys", "generate", str(tmp_path / "j"), "--client", "../x"])
        bad.handler(bad)
    more = keys_parser().parse_args(["keys", "generate", str(tmp_path / "k"), "--client", "recorder"])
    assert more.handler(more) == 0
    out = capsys.readouterr().out
    assert "(kept, unchanged;" in out and "recorder.key_secret" in out and "reload the daemon (systemctl reload trtstream, or SIGHUP)" in out


def test_keys_generate_help_says_what_force_replaces():
    done = subprocess.run([sys.executable, "-m", "daemon", "keys", "generate", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "replace the key pairs of the clients named with --client (DIR/NAME.key, DIR/NAME.key_secret, DIR/authorized_clients/NAME.key) when they exist; never the server key pair" in text


def test_reloading_the_allow_list_refuses_a_removed_key_from_the_next_handshake(zmq_env, tmp_path):
    """Issue 11, finding 5, at the socket level: remove a key file and reload, and a new connection with
    that key is refused; a connection made before keeps going (ZeroMQ authenticates at the handshake).
    An unusable key file rejects the reload and leaves the previous allow list in force."""
    keys = generate_keys(tmp_path / "keys", ["viewer", "recorder"])
    allowed = tmp_path / "keys" / "authorized_clients"
    pub = zmq_env.socket(zmq.PUB)
    zmq_env.auths.append(configure_curve(pub, keys["server"].secret, allowed))
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    server_public = keys["server"].public
    before = zmq_env.subscriber(endpoint, keys["recorder"].secret, server_public)
    publish_until_received(pub, before)

    (allowed / "recorder.key").unlink()
    assert reload_authorized_clients() == [(allowed, 1, 0, 1)]
    monitors: list[zmq.Socket] = []
    after = zmq_env.subscriber(endpoint, keys["recorder"].secret, server_public, monitor=monitors)
    viewer = zmq_env.subscriber(endpoint, keys["viewer"].secret, server_public)
    assert _saw(monitors[0], zmq.EVENT_HANDSHAKE_FAILED_AUTH, 10.0), "the revoked key was admitted on a new connection"
    publish_until_received(pub, viewer)
    pub.send(b"result")
    assert receive(viewer) == b"result" and receive(before) == b"result"
    assert after.poll(300) == 0, "the revoked key received a message on a new connection"

    (allowed / "broken.key").write_text("not a certificate\n")
    (allowed / "recorder.key").write_bytes(keys["recorder"].public.read_bytes())
    with pytest.raises(UserError, match=r"cannot load CURVE key .*broken\.key"):
        reload_authorized_clients()
    again: list[zmq.Socket] = []
    zmq_env.subscriber(endpoint, keys["recorder"].secret, server_public, monitor=again)
    assert _saw(again[0], zmq.EVENT_HANDSHAKE_FAILED_AUTH, 10.0), "a rejected reload must leave the previous list"
