"""Network streams demuxed in a child process (daemon/demux.py), the path NVDEC takes for cameras: a real
HTTP MPEG-TS camera (daemon/bench/tsserver.py, its own process), the real child (PyAV's FFmpeg here; the
GPU machine's child uses PyNvVideoCodec's demuxer), and the packets decoded by FFmpeg in the test to show
they are the stream's pictures. NVDEC decoding those packets runs only on the GPU (tests/test_gpu.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from daemon.demux import PacketStream, annexb_parameter_sets
from daemon.netaddr import free_loopback_port
from daemon.errors import SourceError

from .conftest import REPO, asset
from .test_http_ts import TsCamera, remux_to_ts

av = pytest.importorskip("av", reason="the demuxer child uses PyAV here (the pyav extra)")


@pytest.fixture
def camera(tmp_path):
    camera = TsCamera(remux_to_ts(asset("media/bikes.mp4"), tmp_path / "bikes.ts")).start()
    yield camera
    camera.stop()


def with_password(url: str) -> str:
    return url.replace("http://", "http://viewer:s3cret-pw@")


def test_packets_from_a_network_camera_are_its_pictures_in_order(camera):
    stream = PacketStream(with_password(camera.url), open_timeout_s=5, read_timeout_s=3)
    try:
        header = stream.header
        assert (header.codec, header.width, header.height, header.fps) == ("h264", 640, 272, 25.0)
        assert header.extradata.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")), "parameter sets in Annex B form"
        decoder = av.CodecContext.create("h264", "r")
        packets = [stream.read() for _ in range(60)]
        assert packets[0].key, "a stream starts at a key frame"
        pictures = [frame for packet in packets for frame in decoder.decode(av.Packet(packet.data))]
        assert len(pictures) >= 55 and {(p.width, p.height) for p in pictures} == {(640, 272)}
        with open(f"/proc/{stream.pid}/cmdline", "rb") as cmdline:
            assert b"s3cret-pw" not in cmdline.read(), "the URL travels on stdin, not where ps shows it"
    finally:
        stream.close()
    expected = [frame.to_ndarray(format="gray") for frame in av.open(str(camera.clip)).decode(video=0)][: len(pictures)]
    got = [picture.to_ndarray(format="gray") for picture in pictures]
    assert all((a == b).all() for a, b in zip(got, expected)), "the same pictures as the clip's, in its order"


def test_a_camera_that_keeps_the_connection_but_sends_nothing_is_a_stall(tmp_path):
    """An HTTP server that answers, sends the clip's first packets, then holds the connection open."""
    data = remux_to_ts(asset("media/bikes.mp4"), tmp_path / "bikes.ts").read_bytes()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        connection, _ = server.accept()
        held.append(connection)
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + data[: 188 * 2000])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = with_password(f"http://127.0.0.1:{server.getsockname()[1]}/cam.ts")
    stream = PacketStream(url, open_timeout_s=5, read_timeout_s=1.5)
    try:
        with pytest.raises(SourceError) as caught:
            started = time.monotonic()
            while stream.read() is not None:
                started = time.monotonic()  # the packets it did send
        waited = time.monotonic() - started
        assert 1.4 < waited < 5, f"a stall is seen after the read timeout, not {waited:.1f} s"
        assert caught.value.retryable and "no packet within 1.5 s" in str(caught.value)
        assert "s3cret-pw" not in str(caught.value) and "viewer:***@" in str(caught.value)
        pid = stream.pid
    finally:
        stream.close()
        for connection in held:
            connection.close()
        server.close()
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), "closing the stream ends its demuxer"


def test_a_refused_camera_is_a_retryable_error_naming_the_url_masked():
    port = free_loopback_port()
    with pytest.raises(SourceError) as caught:
        PacketStream(f"http://viewer:s3cret-pw@127.0.0.1:{port}/cam.ts", open_timeout_s=3, read_timeout_s=1)
    text = str(caught.value)
    assert caught.value.retryable and f"http://viewer:***@127.0.0.1:{port}/cam.ts" in text and "s3cret-pw" not in text
    assert "cannot demux" in text and "refused" in text.lower()


def test_the_end_of_a_stream_is_a_clean_end(camera):
    """The camera goes away mid-stream: FFmpeg's HTTP reader sees the end; the reader gets None (and
    reconnects, as for any live source), never a half packet."""
    stream = PacketStream(camera.url, open_timeout_s=5, read_timeout_s=3)
    try:
        assert stream.read() is not None
        camera.stop()
        deadline = time.monotonic() + 30
        ended = False
        while time.monotonic() < deadline:
            try:
                if stream.read() is None:
                    ended = True
                    break
            except SourceError:  # FFmpeg may call a cut connection an error: also an end the reader reconnects from
                ended = True
                break
        assert ended
    finally:
        stream.close()


def test_the_demuxer_dies_with_the_daemon(camera, tmp_path):
    """PR_SET_PDEATHSIG: a daemon killed with SIGKILL leaves no demuxer process behind."""
    script = textwrap.dedent(f"""
        import sys, time
        from daemon.demux import PacketStream
        stream = PacketStream({camera.url!r}, open_timeout_s=5, read_timeout_s=3)
        print(stream.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert os.path.exists(f"/proc/{child}")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and not _is_zombie(child):
            assert time.monotonic() < deadline, "the demuxer outlived its daemon"
            time.sleep(0.05)  # polling another process's end: nothing to wait on
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_parameter_sets_in_avcc_form_become_annex_b():
    sps, pps = bytes.fromhex("6742c01e8c8d40"), bytes.fromhex("68ce3c80")
    avcc = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + bytes([1]) + len(pps).to_bytes(2, "big") + pps
    assert annexb_parameter_sets("h264", avcc) == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    assert annexb_parameter_sets("h264", b"\x00\x00\x00\x01" + sps) == b"\x00\x00\x00\x01" + sps, "Annex B stays as it is"
    assert annexb_parameter_sets("h264", None) == b""
    assert annexb_parameter_sets("h264", avcc[:8]) == b"", "a truncated record gives nothing, not garbage"


def test_nvdec_on_a_network_camera_without_pynvvideocodec_fails_that_source_clearly(camera):
    """The daemon's reader on a network camera with decoder = "nvdec" (this machine has no NVDEC): the
    demuxer process serves it, the decoder cannot be made, the source ends with a reason naming it."""
    import importlib.util

    from .test_sources import drain, reader_for

    if importlib.util.find_spec("PyNvVideoCodec") is not None:
        pytest.skip("PyNvVideoCodec is installed here; tests/test_gpu.py covers NVDEC")
    reader, mux = reader_for(uri=camera.url, decoder="nvdec")
    reader.start()
    frames, ends = drain(mux, timeout=30)
    assert frames == [] and ends[0].reason == "error" and "PyNvVideoCodec" in ends[0].detail


def test_length_prefixed_packets_become_annex_b():
    """Packets from MP4, MKV and FLV (RTMP, HTTP-FLV cameras) carry NAL lengths, not start codes."""
    from daemon.demux import annexb_packet, nal_length_size

    sps, pps = bytes.fromhex("6742c01e8c8d40"), bytes.fromhex("68ce3c80")
    avcc = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + bytes([1]) + len(pps).to_bytes(2, "big") + pps
    assert nal_length_size("h264", avcc) == 4 and nal_length_size("h264", b"\x00\x00\x00\x01" + sps) == 0
    idr, sei = b"\x65" + bytes(range(40)), b"\x06\x05\x01"
    packet = len(sei).to_bytes(4, "big") + sei + len(idr).to_bytes(4, "big") + idr
    assert annexb_packet(packet, 4) == b"\x00\x00\x00\x01" + sei + b"\x00\x00\x00\x01" + idr


def test_a_stream_opened_with_descriptors_past_1023_is_read(camera):
    """The daemon raises its descriptor limit (daemon/limits.py): a camera reconnecting then gets a pipe
    numbered past select()'s 1024, which the packet reader must still wait on."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        stream = PacketStream(camera.url, open_timeout_s=5, read_timeout_s=3)
        try:
            assert stream._child.process.stdout.fileno() > 1023
            assert all(stream.read() is not None for _ in range(10))
        finally:
            stream.close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
