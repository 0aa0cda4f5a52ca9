"""OpenCV decoding in processes beside the daemon (``decode_process = true`` with ``decoder = "opencv"``;
daemon/cpudecodeproc.py): the real child (``python -m daemon.cpudecodechild``), real OpenCV decoding of
real files and of a real HTTP MPEG-TS stream, real pipes, control socket and shared memory. Nothing is
stood in for: this path needs no GPU (page-locking its memory is for GPU preprocessing; tests/test_gpu.py)."""

from __future__ import annotations

import os
import signal
import time

import cv2
import numpy as np
import pytest

from daemon.capture import open_producer
from daemon.client import ResultSubscriber
from daemon.config import SourceConfig
from daemon.cpudecodeproc import SlotImage
from daemon.decodeproc import hosts
from daemon.errors import SourceError

from .conftest import REPO, all_ended, asset, child_processes, collect, detector_config, read_through_a_small_pool
from .test_http_ts import TsCamera, remux_to_ts


@pytest.fixture
def no_process_left():
    yield
    assert hosts.wait_stopped(10.0), "every decoding process reaped"
    assert hosts.processes == 0, "every decoding process stopped with its last camera"
    assert not child_processes(os.getpid(), b"daemon.cpudecodechild"), "none left, not even unreaped"


def _open(uri: str, **fields) -> object:
    return open_producer(SourceConfig(id="cam", uri=uri, decoder="opencv", decode_process=True, queue_size=1, **fields))


def _opencv_frames(path: str, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        assert ok
        frames.append(image)
    capture.release()
    return frames


@pytest.mark.skipif(not hasattr(cv2, "CAP_PROP_N_THREADS"), reason="OpenCV < 4.7 has no CAP_PROP_N_THREADS")
@pytest.mark.parametrize("decoder_threads, most, least", [(None, 2, 2), (2, 5, 3)])
def test_a_camera_in_a_decoding_process_decodes_on_its_own_thread_unless_told_otherwise(no_process_left, decoder_threads, most, least):
    """Issue 13's threads per camera: unset, a camera in a decoding process decodes on its thread alone (the
    process: its main thread and the camera's); ``decoder_threads = 2`` brings FFmpeg's two frame threads
    and its scaling thread back (counted in the child's /proc after two frames)."""
    producer = _open(str(asset("media/bikes.mp4")), decoder_threads=decoder_threads)
    try:
        for _ in range(2):
            assert producer.grab()
            image, _ = producer.retrieve()
            image.release()
        (child,) = child_processes(os.getpid(), b"daemon.cpudecodechild")
        threads = len(os.listdir(f"/proc/{child}/task"))
        assert least <= threads <= most, f"decoder_threads = {decoder_threads}: {threads} threads in the decoding process"
    finally:
        producer.close()


def test_a_file_s_frames_are_opencv_s_own_through_a_small_pool_and_again_after_a_rewind(no_process_left):
    """Frame for frame what OpenCV decodes in this process (same library, same options), in order, through
    a pool of 7 slots read with skipped frames (their slots come back); the end, then a rewind."""
    path = str(asset("media/bikes.mp4"))
    expected = _opencv_frames(path, 250)
    producer = _open(path)
    try:
        assert producer.fps == 25.0 and (producer.width, producer.height) == (640, 272)
        seen = []

        def check(index, image, pts, _):
            assert isinstance(image, SlotImage) and image.shape == (272, 640, 3)
            assert pts == pytest.approx(index * 40.0)
            assert np.array_equal(image, expected[index]), f"frame {index}"
            seen.append(index)

        (child,) = child_processes(os.getpid(), b"daemon.cpudecodechild")
        environment = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        if "OPENBLAS_NUM_THREADS" not in os.environ:
            assert b"OPENBLAS_NUM_THREADS=1" in environment, "no idle thread per core for numpy's OpenBLAS"
        read_through_a_small_pool(producer, 250, lambda index: index % 7 == 3, check)
        assert len(seen) == 250 - len(range(3, 250, 7))
        assert not producer.grab(), "the end of the file"
        assert producer.rewind() and producer.grab()
        image, pts = producer.retrieve()
        assert pts == 0 and np.array_equal(image, expected[0])
        image.release()
    finally:
        producer.close()


def test_copied_frames_give_their_slot_back_at_once(no_process_left):
    """With thumbnails the publisher reads a frame after its batch: copies, in ordinary memory, and a pool
    of 7 slots read 30 frames with every frame kept."""
    producer = open_producer(SourceConfig(id="cam", uri=str(asset("media/bikes.mp4")), decoder="opencv", decode_process=True,
                                          queue_size=1), copy_frames=True)
    try:
        kept = []
        for _ in range(30):
            assert producer.grab()
            image, _ = producer.retrieve()
            assert type(image) is np.ndarray
            kept.append(image)
        assert len({id(image) for image in kept}) == 30 and not np.array_equal(kept[0], kept[29])
    finally:
        producer.close()


def test_a_network_camera_whose_process_is_killed_comes_back_through_a_new_one(no_process_left, tmp_path):
    """An HTTP MPEG-TS camera (daemon/bench/tsserver.py, a real server) decoded beside the daemon; its
    decoding process SIGKILLed mid-stream: the next read fails (retryable), and the camera reopens in a
    new process."""
    camera = TsCamera(remux_to_ts(asset("media/bikes.mp4"), tmp_path / "bikes.ts")).start()
    try:
        producer = _open(camera.url)
        try:
            for _ in range(10):
                assert producer.grab()
                image, pts = producer.retrieve()
                assert image.shape == (272, 640, 3) and pts is None
                image.release()
            (child,) = child_processes(os.getpid(), b"daemon.cpudecodechild")
            os.kill(child, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while producer.grab():  # frames already in flight may still come
                producer.retrieve()[0].release()
                assert time.monotonic() < deadline
        finally:
            producer.close()
        assert hosts.wait_stopped(10.0)
        again = _open(camera.url)
        try:
            assert again.grab()
            image, _ = again.retrieve()
            assert image.shape == (272, 640, 3)
            image.release()
            assert child not in child_processes(os.getpid(), b"daemon.cpudecodechild")
        finally:
            again.close()
    finally:
        camera.stop()


def test_a_missing_file_fails_for_good_without_a_process(no_process_left):
    with pytest.raises(SourceError) as caught:
        _open(str(REPO / "no-such-clip.mp4"))
    assert not caught.value.retryable and "file not found" in str(caught.value)


def test_decode_process_takes_files_and_streams_only():
    with pytest.raises(ValueError, match="decode_process applies to files and network streams"):
        SourceConfig(id="cam", uri="synthetic:64x48@5", decode_process=True)
    with pytest.raises(ValueError, match="not 'pyav'"):
        SourceConfig(id="cam", uri=str(asset("media/bikes.mp4")), decoder="pyav", decode_process=True)


def test_the_daemon_serves_two_cameras_decoded_beside_it(start_daemon, free_port):
    """Two files decoded by OpenCV in one decoding process, through the daemon (ONNX Runtime): every frame
    of each, in order, people detected; the heartbeat counts one process for both."""
    sources = "".join(f'[[sources]]\nid = "{name}"\nuri = "{asset("media/bikes.mp4")}"\ndecode_process = true\nmax_frames = 60\n'
                      for name in ("a", "b"))
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(sources, free_port))
        messages = collect(subscriber, all_ended, timeout=180, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    for name in ("a", "b"):
        indexes = [m.header["frame"]["index"] for m in messages if m.type == "result" and m.source_id == name]
        assert indexes == list(range(60)), name
    labels = {d["label"] for m in messages if m.type == "result" for d in m.header["detections"]}
    assert "person" in labels  # the cyclists of bikes.mp4's first 60 frames
    heartbeat = next(m for m in messages if m.type == "heartbeat" and m.header.get("decoding_processes"))
    assert heartbeat.header["decoding_processes"]["cameras"] == 2 and heartbeat.header["decoding_processes"]["processes"] == 1
