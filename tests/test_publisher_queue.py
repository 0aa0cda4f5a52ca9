"""The publisher's queue: ``queue_size`` bounds results (not hand-overs), what does not fit is counted,
and the room comes back as the publisher thread sends. The publisher is daemon/publisher.py on a real
tcp socket with a real ``ResultSubscriber``; every wait is a poll with a deadline.

The counting is done without a lock shared with the publisher thread (the submitter side and the
publisher thread each own one counter), so this is what checks that the two still add up."""

from __future__ import annotations

import threading
import time

import zmq

from daemon.client import ResultSubscriber
from daemon.config import PublisherConfig
from daemon.entities import Frame, FrameResult, ImageShape
from daemon.publisher import Publisher
from daemon.stats import SourceStats

MODEL_INFO = {"id": "test@000000000000", "sha256": "0" * 64, "pipeline": "detection"}


def _results(first: int, count: int) -> list[FrameResult]:
    now = time.time()
    return [
        FrameResult(Frame("cam1", index, None, ImageShape((240, 320, 3)), now, time.monotonic()), {"detections": []}, now, now, 1, "onnxruntime")
        for index in range(first, first + count)
    ]


def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.005)


def test_queue_size_bounds_results_and_the_room_comes_back_as_they_are_sent(free_port):
    endpoint = f"tcp://127.0.0.1:{free_port}"
    sources = {"cam1": SourceStats("cam1", "synthetic:320x240@100", "synthetic", state="running")}
    publisher = Publisher(PublisherConfig(endpoints=[endpoint], queue_size=5, heartbeat_interval_s=60, linger_ms=0),
                          "f" * 32, MODEL_INFO, sources, lambda: {}, context=zmq.Context())  # fmt: skip
    # Not started: nothing drains, so the bound is exact. Two hand-overs of 3 and 4 results: 5 fit.
    publisher.submit_many(_results(0, 3))
    publisher.submit_many(_results(3, 4))
    assert publisher.stats.dropped_queue_full == 2
    publisher.submit_many(_results(7, 1))
    assert publisher.stats.dropped_queue_full == 3, "a full queue takes nothing more"
    with ResultSubscriber(endpoint, ["cam1"], heartbeats=False) as subscriber:
        publisher.start()
        try:
            _until(lambda: sources["cam1"].frames_published == 5 and publisher.stats.queue_depth == 0, "the 5 queued results sent")
            # The room is back: a subscriber that is surely connected (it got a probe) receives a whole
            # hand-over of queue_size results, in order, and nothing more is dropped.
            probe = 100
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "the subscriber never received a probe result"
                publisher.submit_many(_results(probe, 1))
                message = subscriber.receive(timeout=0.05)
                if message is not None and message.type == "result":
                    break
                probe += 1
            while subscriber.receive(timeout=0.05) is not None:  # probes still on their way
                pass
            publisher.submit_many(_results(1000, 5))
            indexes = []
            while len(indexes) < 5:
                message = subscriber.receive(timeout=10)
                assert message is not None, f"only {indexes} of the 5 results arrived"
                indexes.append(message.header["frame"]["index"])
            assert indexes == list(range(1000, 1005))
            assert publisher.stats.dropped_queue_full == 3
            _until(lambda: publisher.stats.queue_depth == 0, "the queue empty again")
        finally:
            publisher.stop()


def test_a_full_queue_makes_inference_wait_for_room_and_drops_only_after_queue_full_wait_s(free_port):
    """``publisher.queue_full_wait_s``: overload is shed before inference, not after it. The publisher
    thread is held inside its own ``on_published`` hook (after the first send) so its queue fills."""
    sources = {"cam1": SourceStats("cam1", "synthetic:320x240@100", "synthetic", state="running")}
    hold = threading.Event()
    held = threading.Event()

    def on_published(result, header):
        held.set()
        hold.wait(30)

    def publisher_with(wait_s: float) -> Publisher:
        return Publisher(
            PublisherConfig(endpoints=[f"tcp://127.0.0.1:{free_port}"], queue_size=4, queue_full_wait_s=wait_s, heartbeat_interval_s=60, linger_ms=0),
            "f" * 32, MODEL_INFO, sources, lambda: {}, context=zmq.Context(), on_published=on_published,
        )  # fmt: skip

    publisher = publisher_with(30)
    publisher.start()
    try:
        publisher.submit_many(_results(0, 1))
        assert held.wait(10), "the publisher thread never sent the first result"
        publisher.submit_many(_results(1, 4))  # fills the queue: 4 waiting
        submitter = threading.Thread(target=publisher.submit_many, args=(_results(5, 2),))
        submitter.start()
        _until(lambda: publisher._waiting_for_room, "the hand-over waiting for room")
        assert submitter.is_alive() and publisher.stats.dropped_queue_full == 0
        hold.set()  # the publisher goes on: room comes back, the waiting hand-over goes in whole
        submitter.join(10)
        assert not submitter.is_alive()
        _until(lambda: sources["cam1"].frames_published == 7, "all 7 results sent")
        assert publisher.stats.dropped_queue_full == 0 and publisher.stats.queue_full_waits == 1
    finally:
        hold.set()
        publisher.stop()

    sources["cam1"].frames_published = 0
    hold.clear()
    held.clear()
    publisher = publisher_with(0.2)
    publisher.start()
    try:
        publisher.submit_many(_results(0, 1))
        assert held.wait(10)
        publisher.submit_many(_results(1, 4))
        started = time.monotonic()
        publisher.submit_many(_results(5, 2))  # no room within 0.2 s: dropped, counted
        assert time.monotonic() - started >= 0.2
        assert publisher.stats.dropped_queue_full == 2 and publisher.stats.queue_full_waits == 1
    finally:
        hold.set()
        publisher.stop()


def test_a_hand_over_larger_than_the_whole_queue_does_not_wait_for_room_it_can_never_have(free_port):
    sources = {"cam1": SourceStats("cam1", "synthetic:320x240@100", "synthetic", state="running")}
    publisher = Publisher(PublisherConfig(endpoints=[f"tcp://127.0.0.1:{free_port}"], queue_size=4, queue_full_wait_s=30,
                                          heartbeat_interval_s=60, linger_ms=0),
                          "f" * 32, MODEL_INFO, sources, lambda: {}, context=zmq.Context())  # fmt: skip
    publisher.start()
    try:
        started = time.monotonic()
        publisher.submit_many(_results(0, 8))
        assert time.monotonic() - started < 5, "waited for room a queue of 4 never has for 8"
        assert publisher.stats.dropped_queue_full == 4 and publisher.stats.queue_full_waits == 0
        _until(lambda: sources["cam1"].frames_published == 4, "the 4 that fit sent")
    finally:
        publisher.stop()
