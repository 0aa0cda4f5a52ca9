"""NVDEC in a decoding process of its own (``sources[].decode_process``, daemon/gpu/nvdecproc.py) on a
machine without NVDEC: the real child process starts, finds no PyNvVideoCodec and says so in one line,
which the source reports as a failure a retry cannot mend (URL masked), and nothing is left behind. That
the child decodes and hands frames over through CUDA IPC is a GPU test (tests/test_gpu.py)."""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from daemon import cuda

from daemon.capture import open_producer
from daemon.config import SourceConfig
from daemon.errors import SourceError
from daemon.gpu import nvdecproc

from .conftest import asset, child_processes, read_through_a_small_pool
from .test_demux import camera  # noqa: F401 (fixture)


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
    assert nvdecproc.hosts.wait_stopped(10.0), "the decoding process is reaped (on the spawner's thread)"
    assert _open_descriptors() <= before, "the pipes, the error file and the slot memory are closed"
    assert not child_processes(os.getpid(), b"daemon.gpu.nvdecchild"), "no decoding process left, not even unreaped"


# -- the decoding process's protocol, with TEST DOUBLES of CUDA and PyNvVideoCodec ---------------------------
# The child is the real `python -m daemon.gpu.nvdecchild` with its real pipes, control socket (SCM_RIGHTS),
# slot bytes and threads; only CUDA and NVDEC are stood in for (tests/doubles/nvdec_child: "device" memory
# is host memory, the daemon's frame memory a shared file). That NVDEC and CUDA IPC work is tests/test_gpu.py.

DOUBLES = Path(__file__).parent / "doubles" / "nvdec_child"


class FileDeviceBuffer:
    """TEST DOUBLE of daemon.cuda.DeviceBuffer for the daemon's side: a shared file mapped here (its address
    is the "device pointer"); its IPC handle is the file's path, which the child's double maps."""

    live: list["FileDeviceBuffer"] = []

    def __init__(self, nbytes: int, folder: Path):
        self.path = folder / f"frames-{len(FileDeviceBuffer.live)}-{id(self)}"
        self.path.write_bytes(b"\0" * nbytes)
        self._file = open(self.path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), nbytes)
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self.nbytes = nbytes
        self.closed = False
        FileDeviceBuffer.live.append(self)

    def close(self) -> None:
        self.closed = True  # the mapping stays until the test ends: frames read after this would still be readable


@pytest.fixture
def decoding(monkeypatch, tmp_path):
    """The daemon's side of the decoding processes on the doubles; yields the module."""
    import daemon.gpu.nvdecproc as nvdecproc

    fake = types.SimpleNamespace(
        DeviceBuffer=lambda nbytes: FileDeviceBuffer(nbytes, tmp_path),
        ipc_memory_handle=lambda buffer: str(buffer.path).encode(),
        CudaError=cuda.CudaError,
    )
    monkeypatch.setattr(nvdecproc, "cuda", fake)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(DOUBLES), str(Path(__file__).parent.parent)]))
    monkeypatch.setenv("TRTSTREAM_FAKE_CUDA_CHILD", "1")
    FileDeviceBuffer.live.clear()
    yield nvdecproc
    assert nvdecproc.hosts.processes == 0, "every decoding process stopped with its last camera"


def _nv12(image) -> np.ndarray:
    return np.frombuffer(ctypes.string_at(image.y_ptr, image.nbytes), np.uint8).reshape(image.height * 3 // 2, image.width)


def _expected(index: int) -> np.ndarray:
    """Picture ``index`` of the child's decoder double, loaded here under another name: as
    ``PyNvVideoCodec`` it would stand in for the real one in every later test of this process."""
    global _DOUBLE
    if _DOUBLE is None:
        spec = importlib.util.spec_from_file_location("nvdec_child_double", DOUBLES / "PyNvVideoCodec.py")
        _DOUBLE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_DOUBLE)
    return _DOUBLE.picture(index)[:, : _DOUBLE.WIDTH]


_DOUBLE = None


def _open(decoding, uri: str, slots: int = 3, stop: threading.Event | None = None, stream: bool = False):
    return decoding.NvdecProcessProducer(uri, stream=stream, slots=slots, open_timeout_s=10, read_timeout_s=10, stop=stop)


def test_a_file_s_frames_arrive_in_order_through_a_small_pool_and_start_again_after_a_rewind(decoding):
    producer = _open(decoding, str(asset("media/bikes.mp4")))
    try:
        assert producer.fps == 25.0 and (producer.width, producer.height) == (64, 48)

        def check(index, image, pts, _):
            assert pts == pytest.approx(index * 40.0)
            assert np.array_equal(_nv12(image), _expected(index)), f"frame {index}"

        # grabbed and never retrieved (a full queue): their slots must come back, or 3 slots run dry
        read_through_a_small_pool(producer, 20, lambda index: index % 5 == 2, check)
        assert not producer.grab(), "the end of the file"
        assert producer.rewind() and producer.grab()
        image, pts = producer.retrieve()
        assert pts == 0 and np.array_equal(_nv12(image), _expected(0))
        image.release()
    finally:
        producer.close()
    _await(lambda: all(buffer.closed for buffer in FileDeviceBuffer.live), "the frame memory freed once the child let go")


def test_cameras_share_a_decoding_process_and_memory_is_freed_only_after_its_last_frame_returns(decoding):
    first, second = _open(decoding, str(asset("media/bikes.mp4"))), _open(decoding, str(asset("media/bikes.mp4")))
    try:
        assert decoding.hosts.processes == 1
        status = decoding.hosts.status()
        assert status == {"processes": 1, "cameras": 2, "started": status["started"], "lost": status["lost"]}
        _validate_heartbeat_field(status)
        assert first.grab() and second.grab()
        kept, _ = first.retrieve()
        other, _ = second.retrieve()
        assert np.array_equal(_nv12(kept), _expected(0)) and np.array_equal(_nv12(other), _expected(0))
        other.release()
    finally:
        first.close()
    _await(lambda: decoding.hosts.processes == 1 and len(FileDeviceBuffer.live) == 2, "the first camera closed")
    time.sleep(0.3)  # a window in which a wrong free would happen: the frame below is still out
    assert not FileDeviceBuffer.live[0].closed, "a frame still in the pipeline keeps its memory"
    kept.release()
    _await(lambda: FileDeviceBuffer.live[0].closed, "freed at its last frame's return")
    assert second.grab(), "the other camera goes on"
    second.close()


def test_a_killed_decoding_process_reads_as_no_frame_and_the_next_open_starts_another(decoding, caplog):
    producer = _open(decoding, str(asset("media/bikes.mp4")))
    host = decoding.hosts._hosts[0]
    assert producer.grab()
    os.kill(host.child.process.pid, signal.SIGKILL)
    started = time.monotonic()
    while producer.grab() and time.monotonic() - started < 10:
        pass  # frames already in the pipe come first
    assert time.monotonic() - started < 10
    assert "decoding process ended" in caplog.text
    lost = decoding.hosts.status()["lost"]
    producer.close()
    assert decoding.hosts.status()["lost"] == lost + 1, "the heartbeat counts the process that died"
    again = _open(decoding, str(asset("media/bikes.mp4")))
    try:
        assert decoding.hosts._hosts[0] is not host and again.grab()
    finally:
        again.close()


def test_a_reader_waiting_for_a_frame_sees_its_stop_at_once(decoding):
    stop = threading.Event()
    producer = _open(decoding, str(asset("media/bikes.mp4")), slots=2, stop=stop)
    try:
        held = []
        for _ in range(2):
            assert producer.grab()
            held.append(producer.retrieve()[0])  # both slots out: the child waits, no record comes
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert not producer.grab()
        assert time.monotonic() - started < 2, "not its 10 s read timeout"
        for image in held:
            image.release()
    finally:
        producer.close()


def _validate_heartbeat_field(status: dict) -> None:
    """``status`` against the heartbeat's ``decoding_processes`` in the published JSON Schema."""
    import json

    import jsonschema

    def find(node):
        if isinstance(node, dict):
            if "decoding_processes" in node.get("properties", {}):
                return node["properties"]["decoding_processes"]
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        elif isinstance(node, list):
            for value in node:
                if (found := find(value)) is not None:
                    return found
        return None

    schema = find(json.loads((Path(__file__).parent.parent / "docs" / "schema" / "message-v1.schema.json").read_text()))
    assert schema is not None, "the schema documents the field"
    jsonschema.validate(status, schema)


def _await(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


def test_a_network_camera_is_demuxed_by_its_own_process_and_decoded_in_the_shared_one(decoding, camera, caplog):  # noqa: F811
    """The real HTTP MPEG-TS camera, its real demuxer process (started by the decoding process), the
    decoder double numbering one picture per packet: every picture in order past the clip's loop point
    (10 s), the password never in a log line, and the demuxer gone with the camera."""
    url = camera.url.replace("http://", "http://viewer:s3cret-pw@")
    producer = _open(decoding, url, slots=4, stream=True)
    try:
        assert producer.fps == pytest.approx(25.0)
        for index in range(300):
            assert producer.grab(), f"picture {index}: {caplog.text[-300:]}"
            image, pts = producer.retrieve()
            assert pts is None and np.array_equal(_nv12(image), _expected(index)), f"picture {index}"
            image.release()
        host = decoding.hosts._hosts[0].child.process.pid
        assert _demuxers_of(host), "the camera's demuxer is a process of its own"
    finally:
        producer.close()
    assert "s3cret-pw" not in caplog.text
    _await(lambda: not _demuxers_of(host), "the demuxer stopped with its camera")


def _demuxers_of(pid: int) -> list[int]:
    return child_processes(pid, b"daemon.demux")


def test_a_stream_its_camera_ends_reads_as_that_end_with_its_own_line(decoding, tmp_path, free_port, caplog):
    """A finite MPEG-TS over plain HTTP: every picture, then the camera's end (the reader reconnects), said
    as such: not a stall, not a dead process."""
    import logging
    import subprocess

    from .test_demux import remux_to_ts

    remux_to_ts(asset("media/bikes.mp4"), tmp_path / "clip.ts")
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", str(free_port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "Serving HTTP" in server.stdout.readline()  # it listens
        caplog.set_level(logging.INFO, "trtstream.capture")
        producer = _open(decoding, f"http://127.0.0.1:{free_port}/clip.ts", stream=True)
        try:
            count = 0
            while producer.grab():
                image, _ = producer.retrieve()
                image.release()
                count += 1
            assert count == 250
        finally:
            producer.close()
    finally:
        server.kill()
        server.wait(10)
    assert "the camera ended its stream" in caplog.text
    assert "WARNING" not in caplog.text


def test_a_decoding_process_outlives_the_reader_thread_that_needed_it_first(decoding):
    """The kernel kills a child when the thread that started it ends (PR_SET_PDEATHSIG): a camera's reader
    thread ends with its camera, while the process it caused to start serves other cameras too."""
    opened: list = []
    first = threading.Thread(target=lambda: opened.append(_open(decoding, str(asset("media/bikes.mp4")))))
    first.start()
    first.join(30)
    second = _open(decoding, str(asset("media/bikes.mp4")))
    lost = decoding.hosts.status()["lost"]
    try:
        host = decoding.hosts._hosts[0]
        closer = threading.Thread(target=opened[0].close)
        closer.start()
        closer.join(30)  # the first camera's reader is gone, and so is the thread that started its process
        for _ in range(5):
            assert second.grab()
            second.retrieve()[0].release()
        assert host.alive and decoding.hosts.status()["lost"] == lost
    finally:
        second.close()
