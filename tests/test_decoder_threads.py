"""sources[].decoder_threads: how many threads FFmpeg decodes a file or stream with, on real OpenCV and
the real bikes.mp4 (counted in /proc: the threads this process has)."""

from __future__ import annotations

import os

import cv2
import pytest

from daemon.capture import open_producer, read_frame
from daemon.config import SourceConfig

from .conftest import asset


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def opened(decoder_threads: int):
    """A producer on bikes.mp4 after its first frame, and the threads it added to this process."""
    before = threads()
    producer = open_producer(SourceConfig(id="bikes", uri=str(asset("media/bikes.mp4")), decoder_threads=decoder_threads))
    image, _ = read_frame(producer)
    assert image is not None
    return producer, threads() - before


@pytest.mark.skipif(not hasattr(cv2, "CAP_PROP_N_THREADS"), reason="OpenCV < 4.7 has no CAP_PROP_N_THREADS")
@pytest.mark.parametrize("count, least, most", [(1, -99, 0), (2, 1, 3)])
def test_a_capture_decodes_with_the_threads_it_is_given(count, least, most):
    """1: decoding on the reader's own thread; 2: FFmpeg's two frame threads and its coordinator. (FFmpeg's
    own choice starts one per core plus one; -99: a thread left by an earlier test may end meanwhile.)"""
    producer, added = opened(count)
    try:
        assert least <= added <= most, f"decoder_threads = {count} added {added} threads"
    finally:
        producer.close()


def test_the_default_bounds_ffmpeg_to_two_decoding_threads_in_the_daemon_and_one_in_a_decoding_process():
    assert SourceConfig(id="cam", uri="rtsp://camera.local/stream").resolved_decoder_threads == 2
    assert SourceConfig(id="cam", uri="rtsp://camera.local/stream", decode_process=True).resolved_decoder_threads == 1
    assert SourceConfig(id="cam", uri="rtsp://camera.local/stream", decode_process=True, decoder_threads=2).resolved_decoder_threads == 2
