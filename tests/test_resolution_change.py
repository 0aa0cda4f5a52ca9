"""Finding 14c of issue 11: a source whose resolution changes mid-stream (640x272 -> 1280x544).

Each frame must reach the pipelines and the message (``frame.width``/``height``) at its real size: the
pinned pool, sized for the first frame, must never force a frame of another size into its buffers (it is
re-made at the new size), and the change is logged once at info.

What OpenCV's FFmpeg backend does with such a file (checked with opencv-python 5.0.0 on an H.264
MPEG-TS made of two clips joined with ffmpeg): every picture comes out at the stream's *first* size,
the 1280x544 half rescaled to 640x272, and neither ``CAP_PROP_FRAME_WIDTH`` nor any other property
reports the change. The daemon cannot see a size its decoder hides, so the end-to-end test on such a
file is an expected failure that names the cause (strict: it turns into a failure the day the decoder
reports real sizes, so the marker cannot outlive the limit). The reader/pool mechanism is tested on
OpenCV's image-sequence backend, which delivers each frame at its own size.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from daemon.capture import OpenCVProducer
from daemon.config import SourceConfig, SourceKind
from daemon.entities import release_image
from daemon.framequeue import Multiplexer
from daemon.sources import SourceReader
from daemon.stats import SourceStats

from .conftest import all_ended, collect, detector_config, missing
from .doubles.fake_cuda import FakeCuda

SMALL, LARGE = (640, 272), (1280, 544)


def clip(path, size, count, value) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    assert writer.isOpened()
    for index in range(count):
        image = np.full((size[1], size[0], 3), value, np.uint8)
        image[:, (index * 8) % size[0]:][:, :16] = 255
        writer.write(image)
    writer.release()


def joined_clip(tmp_path):
    """Two VideoWriter clips, 640x272 then 1280x544, joined by ffmpeg into one H.264 MPEG-TS (a
    container whose stream may change size at a keyframe, as a reconfigured camera's does)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        missing("needs ffmpeg (apt-get install -y ffmpeg)")
    parts = []
    for name, size, value in (("a", SMALL, 60), ("b", LARGE, 180)):
        clip(tmp_path / f"{name}.mp4", size, 8, value)
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(tmp_path / f"{name}.mp4"), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        str(tmp_path / f"{name}.ts")], check=True, timeout=60)
        parts.append(str(tmp_path / f"{name}.ts"))
    joined = tmp_path / "joined.ts"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", "concat:" + "|".join(parts), "-c", "copy", str(joined)], check=True, timeout=60)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=width,height", "-of", "csv=p=0",
                            str(joined)], capture_output=True, text=True, check=True, timeout=60)
    sizes = [tuple(map(int, line.split(",")[:2])) for line in probe.stdout.split() if line]
    assert sizes == [SMALL] * 8 + [LARGE] * 8, "the file really changes size mid-stream"
    return joined


@pytest.mark.parametrize("decoder", [
    "pyav",
    pytest.param("opencv", marks=pytest.mark.xfail(strict=True, reason="OpenCV's FFmpeg backend rescales every frame to the stream's first size and reports no change")),
])
def test_joined_clip_results_carry_each_frames_real_size(tmp_path, start_daemon, free_port, decoder):
    """``decoder = "pyav"`` is the way to serve such a stream (its pictures come at their real size)."""
    from daemon.client import ResultSubscriber

    if decoder == "pyav":
        if importlib.util.find_spec("av") is None:
            missing("needs PyAV: pip install 'trtstream[pyav]'")
    path = joined_clip(tmp_path)
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(f'[[sources]]\nid = "joined"\nuri = "{path}"\ndecoder = "{decoder}"\n', free_port))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    sizes = [(m.header["frame"]["width"], m.header["frame"]["height"]) for m in messages if m.type == "result"]
    assert sizes == [SMALL] * 8 + [LARGE] * 8


def sequence(tmp_path, small=(64, 48), large=(128, 96), count=4) -> tuple[str, list[np.ndarray]]:
    """PNG frames that change size half-way, for OpenCV's image-sequence backend."""
    images = []
    for index in range(2 * count):
        width, height = small if index < count else large
        image = np.full((height, width, 3), 10 * index, np.uint8)
        cv2.imwrite(str(tmp_path / f"frame_{index:03d}.png"), image)
        images.append(image)
    return str(tmp_path / "frame_%03d.png"), images


def test_reader_and_pinned_pool_follow_a_size_change(tmp_path, monkeypatch, caplog):
    import daemon.pinned as pinned
    from daemon.pinned import PinnedImage

    fake = FakeCuda()
    monkeypatch.setattr(pinned, "cuda", fake)
    pattern, expected = sequence(tmp_path)
    producers = []

    def open_sequence(config, stop=None):  # a real OpenCV decode; only the backend is chosen here
        producer = OpenCVProducer(cv2.VideoCapture(pattern, cv2.CAP_IMAGES), SourceKind.FILE, pinned_frames=3)
        producers.append(producer)
        return producer

    config = SourceConfig.model_validate({"id": "seq", "uri": str(tmp_path / "frame_000.png"), "queue_size": 16})
    mux = Multiplexer()
    stats = SourceStats(config.id, config.uri, "file")
    queue = mux.add_queue(config.id, config.queue_size, config.effective_drop_policy, stats=stats)
    reader = SourceReader(config, queue, stats, producer_factory=open_sequence)
    caplog.set_level(logging.INFO, logger="trtstream.sources")
    reader.start()
    frames, ends, stop, deadline = [], [], threading.Event(), time.monotonic() + 30
    while not ends:
        assert time.monotonic() < deadline, "the source did not end"
        batch = mux.next_batch(16, 0, stop)
        frames += batch.frames
        ends += batch.ends
    assert reader.join(5)

    assert [f.image.shape[:2] for f in frames] == [e.shape[:2] for e in expected], "each frame at its own size"
    for frame, image in zip(frames, expected):
        assert np.array_equal(np.asarray(frame.image), image)
        if isinstance(frame.image, PinnedImage):  # never a frame in a buffer of another size
            assert frame.image._pool.shape == frame.image.shape
    assert any(isinstance(f.image, PinnedImage) and f.image.shape == (96, 128, 3) for f in frames), "the pool was re-made at the new size"
    assert (producers[0].width, producers[0].height) == (128, 96)
    changes = [r.getMessage() for r in caplog.records if "frame size changed" in r.getMessage()]
    assert changes == ["source seq: frame size changed from 64x48 to 128x96"]
    assert all(r.levelno == logging.INFO for r in caplog.records if "frame size changed" in r.getMessage())
    for frame in frames:
        release_image(frame)
    assert len(fake.pinned) == 0, "every pinned buffer of both pools freed"
