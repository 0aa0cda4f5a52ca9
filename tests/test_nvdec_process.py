"""NVDEC in a decoding process of its own (``sources[].decode_process``, daemon/gpu/nvdecproc.py) on a
machine without NVDEC: the real child process starts, finds no PyNvVideoCodec and says so in one line,
which the source reports as a failure a retry cannot mend (URL masked), and nothing is left behind. That
the child decodes and hands frames over through CUDA IPC is a GPU test (tests/test_gpu.py)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from daemon.capture import open_producer
from daemon.config import SourceConfig
from daemon.errors import SourceError

from .conftest import asset


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("uri", ["FILE", "rtsp://viewer:hunter2@127.0.0.1:9/cam"])
def test_without_pynvvideocodec_the_child_s_one_line_fails_the_source_for_good(uri):
    if importlib.util.find_spec("PyNvVideoCodec") is not None:
        pytest.skip("PyNvVideoCodec is installed here: the GPU tests cover this machine")
    uri = str(asset("media/bikes.mp4")) if uri == "FILE" else uri
    source = SourceConfig(id="cam", uri=uri, decoder="nvdec", decode_process=True)
    before = _open_descriptors()
    with pytest.raises(SourceError) as caught:
        open_producer(source)
    message = str(caught.value)
    assert "NVDEC needs PyNvVideoCodec" in message and "\n" not in message
    assert not caught.value.retryable
    assert "hunter2" not in message
    assert _open_descriptors() <= before, "the pipes, the error file and the slot memory are closed"
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_our_child(int(pid))], "no decoding process left"


def _is_our_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
    except OSError:
        return False
    return int(fields[1]) == os.getpid() and b"daemon.gpu.nvdecchild" in command and fields[0] != "Z"
