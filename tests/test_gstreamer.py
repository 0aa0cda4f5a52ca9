"""GStreamer pipelines (issue 13, item 5). Which pipelines are live (a camera to reconnect to) and which
are finite (their end is an end-of-stream) is decided from the pipeline text, or ``sources[].live``:
tested everywhere. The pipelines themselves run only with an OpenCV built with GStreamer — the system
one (``TRTSTREAM_OPENCV=system scripts/setup``: Debian's python3-opencv, JetPack's OpenCV), which CI
runs this file under with ``TRTSTREAM_REQUIRE_GSTREAMER=1``; with the pip wheel (no GStreamer) they skip
and say so."""

from __future__ import annotations

import threading

import pytest

from daemon.client import ResultSubscriber
from daemon.config import DropPolicy, SourceConfig, gstreamer_pipeline_is_live
from daemon.framequeue import Multiplexer
from daemon.sources import SourceReader, SourceState
from daemon.stats import SourceStats

from .conftest import all_ended, collect, detector_config

FINITE = "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! appsink"


@pytest.mark.parametrize(
    ("pipeline", "live"),
    [
        (FINITE, False),
        ("filesrc location=clip.mp4 ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! appsink", False),
        ("videotestsrc is-live=true ! videoconvert ! appsink", True),
        ("rtspsrc location=rtsp://cam/x latency=100 ! rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! appsink", True),
        ("v4l2src device=/dev/video0 ! videoconvert ! appsink", True),
        ("nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink", True),
        ('uridecodebin uri="rtsp://cam/x" ! videoconvert ! appsink', True),
        ("uridecodebin uri=file:///clip.mp4 ! videoconvert ! appsink", False),
    ],
)
def test_a_pipeline_is_live_when_it_starts_from_a_camera_or_the_network(pipeline, live):
    assert gstreamer_pipeline_is_live(pipeline) is live
    config = SourceConfig.model_validate({"id": "g", "uri": pipeline})
    assert config.is_live is live and config.ends_by_itself is not live
    assert config.effective_drop_policy is (DropPolicy.DROP_OLDEST if live else DropPolicy.BLOCK)


def test_live_overrides_the_guess_and_applies_to_pipelines_only():
    assert SourceConfig.model_validate({"id": "g", "uri": FINITE, "live": True}).is_live
    assert not SourceConfig.model_validate({"id": "g", "uri": "rtspsrc location=rtsp://c/x ! appsink", "live": False}).is_live
    with pytest.raises(ValueError, match="live applies to GStreamer pipelines only"):
        SourceConfig.model_validate({"id": "g", "uri": "rtsp://cam/x", "live": True})


def test_a_finite_pipeline_delivers_every_frame_then_ends_once(gstreamer):
    """The bug this fixes: a pipeline that ends by itself was taken for a dropped camera and reopened for
    ever (2640 frames in 90 s from a 60-frame pipeline)."""
    config = SourceConfig.model_validate({"id": "g", "uri": FINITE, "queue_size": 4})
    mux = Multiplexer()
    stats = SourceStats(config.id, config.uri, "gstreamer")
    queue = mux.add_queue(config.id, config.queue_size, config.effective_drop_policy, stats=stats)
    reader = SourceReader(config, queue, stats)
    reader.start()
    frames, ends, stop = [], [], threading.Event()
    while not ends:
        batch = mux.next_batch(8, 0.05, stop)
        frames += batch.frames
        ends += batch.ends
        assert reader.stats.frames_captured <= 60, "read past the pipeline's end: reopened"
    assert reader.join(10)
    assert [f.index for f in frames] == list(range(60))
    assert frames[0].image.shape == (240, 320, 3)
    assert [e.reason for e in ends] == ["end_of_file"]
    assert reader.state is SourceState.ENDED and reader.stats.reconnects == 0 and reader.stats.frames_dropped == 0


def test_the_daemon_serves_a_pipeline_and_reports_its_end(gstreamer, start_daemon, free_port):
    config = detector_config(f'[[sources]]\nid = "pattern"\nuri = "{FINITE}"\n', free_port)
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(60) == 0, daemon.stderr
    results = [m for m in messages if m.type == "result"]
    assert [m.header["frame"]["index"] for m in results] == list(range(60))
    (eos,) = [m for m in messages if m.type == "eos"]
    assert eos.header["reason"] == "end_of_file" and eos.header["frames_published"] == 60
