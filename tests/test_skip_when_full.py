"""``sources[].skip_when_full``: a live source whose queue is full goes past frames without converting
them (OpenCV ``grab()`` without ``retrieve()``) and counts them as dropped: drop before decoding, not
after (issue 13, item 2). Real OpenCV decoding of the real sample clip, real reader threads."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from daemon.capture import OpenCVProducer, open_producer, read_frame
from daemon.config import SourceConfig, SourceKind
from daemon.framequeue import Multiplexer
from daemon.sources import SourceReader
from daemon.stats import SourceStats

from .conftest import asset


def test_opencv_grab_without_retrieve_goes_past_a_frame():
    clip = str(asset("media/bikes.mp4"))
    skipping = OpenCVProducer(cv2.VideoCapture(clip), SourceKind.FILE)
    reading = OpenCVProducer(cv2.VideoCapture(clip), SourceKind.FILE)
    try:
        first, _ = read_frame(skipping)
        assert skipping.grab() and skipping.grab()
        after, pts = read_frame(skipping)
        expected = [read_frame(reading)[0] for _ in range(4)]
        np.testing.assert_array_equal(first, expected[0])
        np.testing.assert_array_equal(after, expected[3])  # frames 1 and 2 were gone past
        assert pts == pytest.approx(3 * 40.0)  # 25 fps: the position moved on with the skips
    finally:
        skipping.close()
        reading.close()


def _run_unconsumed(skip_when_full: bool, frames: int = 20):
    """A paced file (a live source: drop_oldest) with a queue of 2 that nobody takes from, until it has
    captured ``frames`` frames; returns (queued frame indexes, stats, how many frames were retrieved,
    i.e. converted to BGR: counted on the real OpenCV producer)."""
    retrieved = [0]

    def counting_producer(config, stop=None, pinned_frames=0):
        producer = open_producer(config, stop, pinned_frames)
        real = producer.retrieve

        def retrieve():
            retrieved[0] += 1
            return real()

        producer.retrieve = retrieve
        return producer

    config = SourceConfig.model_validate({"id": "cam", "uri": str(asset("media/bikes.mp4")), "pace": True, "queue_size": 2,
                                          "skip_when_full": skip_when_full})  # fmt: skip
    mux = Multiplexer()
    stats = SourceStats(config.id, config.uri, "file")
    queue = mux.add_queue(config.id, config.queue_size, config.effective_drop_policy, stats=stats)
    reader = SourceReader(config, queue, stats, producer_factory=counting_producer)
    reader.start()
    deadline = time.monotonic() + 30
    while stats.frames_captured < frames:
        assert time.monotonic() < deadline, f"only {stats.frames_captured} frames captured in 30 s"
        time.sleep(0.01)
    reader.stop()
    assert reader.join(10)
    batch = mux.next_batch(16, 0, threading.Event())
    return [f.index for f in batch.frames], stats, retrieved[0]


def test_a_full_queue_drops_before_converting_and_counts_every_drop():
    indexes, stats, retrieved = _run_unconsumed(skip_when_full=True)
    assert indexes == [0, 1], "the frames that found room; every later one was gone past unconverted"
    assert stats.frames_dropped == stats.frames_captured - 2
    assert retrieved == 2, f"{retrieved} frames converted for 2 kept"


def test_without_skipping_every_frame_is_converted_and_the_queue_keeps_the_newest():
    indexes, stats, retrieved = _run_unconsumed(skip_when_full=False)
    assert indexes[0] > 1 and indexes == [indexes[0], indexes[0] + 1], indexes
    assert stats.frames_dropped == stats.frames_captured - 2
    assert retrieved == stats.frames_captured
