"""Readers decoding straight into pooled pinned buffers (daemon/pinned.py, OpenCVProducer), with the CUDA
test double standing in for page-locked memory (no GPU here; the real pool is used by the daemon GPU tests
in tests/test_gpu.py): OpenCV really decodes bikes.mp4 into the pool's buffers, frames go back after use or
a drop, an empty pool makes the reader decode into ordinary memory instead of waiting, and closing frees
idle buffers at once and busy ones on return."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from daemon.config import DropPolicy, SourceKind
from daemon.entities import Frame, release_image
from daemon.framequeue import Multiplexer

from .conftest import asset
from .doubles.fake_cuda import FakeCuda


@pytest.fixture
def fake(monkeypatch):
    import daemon.pinned as module

    fake = FakeCuda()
    monkeypatch.setattr(module, "cuda", fake)
    return fake


def _live(fake) -> int:
    return len(fake.pinned)  # the double's live pinned buffers


def test_opencv_decodes_into_the_pool_and_frames_equal_an_ordinary_decode(fake):
    from daemon.capture import OpenCVProducer, read_frame
    from daemon.pinned import PinnedImage

    producer = OpenCVProducer(cv2.VideoCapture(str(asset("media/bikes.mp4"))), SourceKind.FILE, pinned_frames=3)
    reference = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    first, _ = read_frame(producer)  # sizes the pool
    assert not isinstance(first, PinnedImage) and _live(fake) == 3
    ok, want = reference.read()
    np.testing.assert_array_equal(first, want)
    addresses = {buffer.ptr for buffer in fake.pinned}
    images = []
    for _ in range(3):
        image, _ = read_frame(producer)
        ok, want = reference.read()
        assert isinstance(image, PinnedImage) and image.ctypes.data in addresses, "decoded in place, not copied"
        np.testing.assert_array_equal(image, want)
        images.append(image)
    overflow, _ = read_frame(producer)  # all three in use: ordinary memory, no wait
    assert not isinstance(overflow, PinnedImage) and producer._pool.misses == 1
    images[0].release()
    images[0].release()  # a second release is harmless
    again, _ = read_frame(producer)
    assert isinstance(again, PinnedImage) and again.ctypes.data == images[0].ctypes.data
    producer.close()
    assert _live(fake) == 3, "the three busy buffers outlive close"
    for image in (again, images[1], images[2]):
        image.release()
    assert _live(fake) == 0, "every buffer freed once the last frame came back"


def test_a_frame_dropped_by_the_queue_goes_back_to_the_pool(fake):
    from daemon.pinned import PinnedImagePool

    pool = PinnedImagePool(1, (8, 8, 3))
    queue = Multiplexer().add_queue("cam", 1, DropPolicy.DROP_OLDEST)
    queue.put(Frame("cam", 0, None, pool.take(), 0.0, 0.0))
    assert pool.take() is None
    queue.put(Frame("cam", 1, None, np.zeros((8, 8, 3), np.uint8), 0.0, 0.0))  # drops frame 0
    assert queue.dropped == 1
    image = pool.take()
    assert image is not None
    release_image(Frame("cam", 2, None, image, 0.0, 0.0))
    assert pool.take() is not None


def test_views_of_a_pinned_frame_do_not_release_it(fake):
    from daemon.pinned import PinnedImagePool

    pool = PinnedImagePool(1, (4, 4, 3))
    image = pool.take()
    image[1:3].release()  # a slice owns nothing
    assert pool.take() is None
    image.release()
    assert pool.take() is not None
