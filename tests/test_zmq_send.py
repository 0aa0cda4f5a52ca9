"""daemon/zmq_send.py: ZeroMQ sends that keep the GIL, on the libzmq pyzmq loaded. Real sockets: what
they send arrives as pyzmq's own sends would deliver it, multipart included, and the publisher uses
them (or, configured off, pyzmq's)."""

from __future__ import annotations

import time

import pytest
import zmq

from daemon.zmq_send import DONTWAIT, SNDMORE, sender_for, unavailable_reason


@pytest.fixture
def pair(free_port):
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{free_port}")
    sub = context.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{free_port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    yield pub, sub
    sub.close(0)
    pub.close(0)
    context.term()


def test_the_loaded_libzmq_is_found_here():
    assert unavailable_reason() is None  # Linux with pyzmq's wheel: what CI and the GPU machine run


def test_multipart_messages_arrive_whole_and_in_order(pair):
    pub, sub = pair
    sender = sender_for(pub)
    assert sender is not None
    deadline = time.monotonic() + 10
    while not sub.poll(10):  # until the subscription has reached the publisher (a PUB drops before that)
        assert time.monotonic() < deadline, "the subscriber never connected"
        sender.send(b"probe", DONTWAIT)
    while sub.poll(50):
        sub.recv_multipart()
    payload = bytes(range(256)) * 40
    for index in range(50):
        assert sender.send(b"topic/%d" % index, DONTWAIT | SNDMORE)
        assert sender.send(payload + b"%d" % index, DONTWAIT)
    received = []
    while len(received) < 50:
        assert sub.poll(10_000), f"only {len(received)} of 50 messages arrived"
        received.append(sub.recv_multipart())
    assert received == [[b"topic/%d" % i, payload + b"%d" % i] for i in range(50)]
