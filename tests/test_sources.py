"""Source readers on real files, a real refused network stream, and the synthetic pattern."""

from __future__ import annotations

import threading
import time

import pytest

from daemon.config import SourceConfig
from daemon.framequeue import Multiplexer
from daemon.sources import SourceReader, SourceState
from daemon.stats import SourceStats

from .conftest import asset


def drain(mux: Multiplexer, timeout: float = 60.0):
    """Everything the reader produced, until its end of stream."""
    frames, ends = [], []
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    while not ends:
        assert time.monotonic() < deadline, "source did not end"
        batch = mux.next_batch(16, 0, stop)
        frames += batch.frames
        ends += batch.ends
    return frames, ends


def reader_for(**fields) -> tuple[SourceReader, Multiplexer]:
    config = SourceConfig.model_validate({"id": "s", **fields})
    mux = Multiplexer()
    stats = SourceStats(config.id, config.uri, config.resolved_kind.value)
    queue = mux.add_queue(config.id, config.queue_size, config.effective_drop_policy, stats=stats)
    return SourceReader(config, queue, stats), mux


def test_unpaced_file_delivers_every_frame_in_order_then_ends():
    reader, mux = reader_for(uri=str(asset("media/bikes.mp4")), queue_size=2)
    reader.start()
    frames, ends = drain(mux)
    assert reader.join(5)
    assert [f.index for f in frames] == list(range(250))
    assert frames[0].image.shape == (272, 640, 3)
    assert frames[-1].pts_ms > frames[0].pts_ms
    assert [(e.source_id, e.reason) for e in ends] == [("s", "end_of_file")]
    assert reader.state is SourceState.ENDED and reader.stats.frames_dropped == 0


def test_looped_file_restarts_and_max_frames_ends_it():
    reader, mux = reader_for(uri=str(asset("media/bikes.mp4")), loop=True, max_frames=300)
    reader.start()
    frames, ends = drain(mux)
    assert len(frames) == 300 and ends[0].reason == "max_frames"


def test_missing_file_fails_at_once_without_retrying():
    reader, mux = reader_for(uri="/nonexistent/clip.mp4")
    reader.start()
    frames, ends = drain(mux, timeout=10)
    assert frames == [] and ends[0].reason == "error" and "file not found" in ends[0].detail
    assert reader.state is SourceState.FAILED and reader.stats.reconnects == 0


def test_refused_stream_backs_off_and_retries_with_the_password_masked(free_port):
    reader, mux = reader_for(
        uri=f"rtsp://admin:hunter2@127.0.0.1:{free_port}/live",
        reconnect={"initial_delay_s": 0.05, "max_delay_s": 0.1, "max_attempts": 3, "open_timeout_s": 2},
    )
    reader.start()
    frames, ends = drain(mux, timeout=30)
    assert frames == []
    assert ends[0].reason == "error"
    assert "hunter2" not in ends[0].detail and "admin:***@" in ends[0].detail
    assert reader.state is SourceState.FAILED
    assert "hunter2" not in (reader.stats.last_error or "")


def test_stop_interrupts_backoff_promptly(free_port):
    reader, mux = reader_for(uri=f"rtsp://127.0.0.1:{free_port}/live", reconnect={"initial_delay_s": 60, "max_delay_s": 60})
    reader.start()
    deadline = time.monotonic() + 20
    while reader.state is not SourceState.BACKOFF:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polling a state with a deadline; no event exists for 'entered backoff'
    started = time.monotonic()
    reader.stop()
    assert reader.join(5)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("size", ["synthetic:320x240@1000"])
def test_synthetic_source(size):
    reader, mux = reader_for(uri=size, max_frames=5, drop_policy="block")
    reader.start()
    frames, ends = drain(mux)
    assert [f.image.shape for f in frames] == [(240, 320, 3)] * 5
    assert ends[0].reason == "max_frames"


def test_nvdec_without_pynvvideocodec_fails_that_source_with_a_clear_reason():
    import importlib.util

    if importlib.util.find_spec("PyNvVideoCodec") is not None:
        pytest.skip("PyNvVideoCodec is installed here; tests/test_gpu.py covers NVDEC")
    reader, mux = reader_for(uri=str(asset("media/bikes.mp4")), decoder="nvdec")
    reader.start()
    frames, ends = drain(mux, timeout=30)
    assert frames == [] and ends[0].reason == "error" and "PyNvVideoCodec" in ends[0].detail


def test_nvdec_is_for_files_and_network_streams():
    from daemon.config import parse_config
    from daemon.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sources\[0\].*decoder = 'nvdec' applies to files and network streams"):
        parse_config({"sources": [{"id": "c", "uri": "usb:0", "decoder": "nvdec"}], "model": {"path": "m", "pipeline": "detection"}})
    config = parse_config({"sources": [{"id": "c", "uri": "rtsp://h/s", "decoder": "nvdec"}], "model": {"path": "m", "pipeline": "detection"}})
    assert config.sources[0].decoder == "nvdec"


def test_pyav_is_for_files_and_network_streams():
    from daemon.config import parse_config
    from daemon.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sources\[0\].*decoder = 'pyav' applies to files and network streams"):
        parse_config({"sources": [{"id": "c", "uri": "usb:0", "decoder": "pyav"}], "model": {"path": "m", "pipeline": "detection"}})


def test_pyav_reads_a_file_at_its_own_size_and_rewinds():
    """PyAV (decoder = "pyav") decodes bikes.mp4 frame for frame as OpenCV does (same size, count and
    picture, within the decoders' colour rounding), with file positions, and loops."""
    import cv2
    import numpy as np

    pytest.importorskip("av", reason="needs PyAV: pip install 'trtstream[pyav]'")
    reader, mux = reader_for(uri=str(asset("media/bikes.mp4")), decoder="pyav", loop=True, max_frames=300)
    reader.start()
    frames, ends = drain(mux, timeout=60)
    assert reader.join(5)
    capture = cv2.VideoCapture(str(asset("media/bikes.mp4")))
    ok, first = capture.read()
    assert ok and ends[0].reason == "max_frames" and [f.index for f in frames] == list(range(300))
    assert frames[0].image.shape == first.shape == (272, 640, 3)
    assert np.abs(frames[0].image.astype(int) - first.astype(int)).mean() < 3
    positions = [frame.pts_ms for frame in frames]
    assert positions[:250] == sorted(positions[:250]) and positions[1] > positions[0]
    assert positions[250] == positions[0], "looped: the 251st frame is the first again"
