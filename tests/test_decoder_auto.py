"""``decoder = "auto"`` (issue 13, item 1): NVDEC where it can serve, OpenCV elsewhere. On this machine
(no GPU, no PyNvVideoCodec) what is real is the refusal: NVDEC cannot open, and a source resolved to it
falls back to OpenCV for good, with one log line, reading the real clip. That NVDEC is picked and decodes
on a GPU is tests/test_gpu.py's."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from daemon.capture import AutoDecoderFactory, resolve_decoder
from daemon.client import ResultSubscriber
from daemon.config import SourceConfig

from .conftest import all_ended, asset, collect, detector_config


def source(uri: str, **fields) -> SourceConfig:
    return SourceConfig(id="cam", uri=uri, **fields)


@pytest.mark.parametrize(
    ("uri", "decoder", "device_frames", "expected"),
    [
        (asset("media/bikes.mp4"), "auto", False, "opencv"),  # a CPU backend: never NVDEC
        ("rtsp://camera.lan/stream", "auto", False, "opencv"),
        ("synthetic:64x48@10", "auto", True, "opencv"),  # not a file or stream: NVDEC cannot read it
        (asset("media/bikes.mp4"), "opencv", True, "opencv"),  # what the config says is kept
        (asset("media/bikes.mp4"), "pyav", False, "pyav"),
    ],
)
def test_auto_resolves_to_what_can_serve_the_source(uri, decoder, device_frames, expected):
    assert resolve_decoder(source(str(uri), decoder=decoder), device_frames) == expected


def test_auto_with_device_frames_but_no_pynvvideocodec_is_opencv():
    if importlib.util.find_spec("PyNvVideoCodec") is not None:
        pytest.skip("PyNvVideoCodec is installed here: the GPU tests cover this machine")
    assert resolve_decoder(source(str(asset("media/bikes.mp4")), decoder="auto"), True) == "opencv"


def test_a_source_nvdec_refuses_is_read_with_opencv_for_good(caplog):
    factory = AutoDecoderFactory()
    config = source(str(asset("media/bikes.mp4")), decoder="auto")
    with caplog.at_level(logging.WARNING, logger="trtstream.capture"):
        first = factory(config)
        second = factory(config)
    try:
        for producer in (first, second):
            assert producer.grab()
            image, _ = producer.retrieve()
            assert image.shape == (272, 640, 3)  # bikes.mp4, decoded by OpenCV on the host
    finally:
        first.close()
        second.close()
    warnings = [r.getMessage() for r in caplog.records if "decoding it with OpenCV instead" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the refusal is remembered: no NVDEC attempt (and no line) per reconnect


def test_the_daemon_serves_an_auto_source_on_the_cpu(start_daemon, free_port):
    config = detector_config(f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\ndecoder = "auto"\nmax_frames = 12\n', free_port)
    daemon = start_daemon(config + "\n[control]\nenabled = false\n")
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
    assert daemon.wait(30) == 0, daemon.stderr
    assert sum(m.type == "result" for m in messages) == 12
    assert "decoder 'auto' decodes with OpenCV" in daemon.stderr
