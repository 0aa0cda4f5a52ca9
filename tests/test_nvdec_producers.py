"""The NVDEC producers' own logic on the CPU: a TEST DOUBLE of PyNvVideoCodec (its decoders cannot exist
without an NVIDIA driver) whose frames are NV12 planes in the CUDA test double's device memory, so the
copy out of the decoder's surface is checked byte for byte. For network cameras the packets come from the
real demuxer process reading a real HTTP MPEG-TS camera. That NVDEC itself decodes them is a GPU test
(tests/test_gpu.py); this shows what the producers do with what it returns."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import types

import numpy as np
import pytest

from .doubles.fake_cuda import FakeCuda
from .test_demux import camera  # noqa: F401 (fixture)


class FakeDecodedFrame:
    """A TEST DOUBLE of PyNvVideoCodec's DecodedFrame: luma rows of ``pitch`` bytes, chroma after them (or
    at ``uv_ptr``), described as PyNvVideoCodec describes them (shape as a list)."""

    def __init__(self, fake: FakeCuda, width: int, height: int, pitch: int, value: int, contiguous: bool = True):
        self.width, self.height, self.pitch = width, height, pitch
        self.y_ptr = fake.device.alloc(pitch * height * 3 // 2)
        self.uv_ptr = self.y_ptr + pitch * height if contiguous else fake.device.alloc(pitch * height // 2)
        rng = np.random.default_rng(value)
        self.y = rng.integers(0, 255, (height, pitch), np.uint8)
        self.uv = rng.integers(0, 255, (height // 2, pitch), np.uint8)
        fake.device.view(self.y_ptr, self.y.nbytes)[:] = self.y.reshape(-1)
        fake.device.view(self.uv_ptr, self.uv.nbytes)[:] = self.uv.reshape(-1)

    def cuda(self):
        def plane(ptr: int, rows: int, columns: int):
            return types.SimpleNamespace(__cuda_array_interface__={
                "shape": [rows, columns, 1], "strides": (self.pitch, 1, 1), "data": (ptr, False), "typestr": "|u1", "version": 3})
        return [plane(self.y_ptr, self.height, self.width), plane(self.uv_ptr, self.height // 2, self.width // 2 * 2)]

    def expected_nv12(self) -> np.ndarray:
        return np.concatenate([self.y[:, : self.width], self.uv[:, : self.width]]).reshape(-1)


def fake_pynvvideocodec(frames: list, decode_error: Exception | None = None) -> types.ModuleType:
    """A TEST DOUBLE of the PyNvVideoCodec module: SimpleDecoder hands out ``frames`` in order; the
    decoder of CreateDecoder returns the next of ``frames`` for each packet (recording each packet's bytes)."""
    module = types.ModuleType("PyNvVideoCodec")
    module.OutputColorType = types.SimpleNamespace(NATIVE="native")
    module.cudaVideoCodec = types.SimpleNamespace(H264="H264", HEVC="HEVC")
    module.packets = []

    class SimpleDecoder:
        def __init__(self, path, **options):
            self._next = 0

        def get_stream_metadata(self):
            return types.SimpleNamespace(average_fps=25.0, num_frames=len(frames))

        def get_batch_frames(self, count):
            frame = frames[self._next] if self._next < len(frames) else None
            self._next += 1
            return [frame] if frame is not None else []

        def seek_to_index(self, index):
            self._next = index

    class PacketData:
        bsl_data = 0
        bsl = 0

    class Decoder:
        def __init__(self):
            self._next = 0

        def Decode(self, packet):  # noqa: N802 (PyNvVideoCodec's name)
            if decode_error is not None:
                raise decode_error
            module.packets.append(ctypes.string_at(packet.bsl_data, packet.bsl))
            frame = frames[self._next % len(frames)]
            self._next += 1
            return [frame]

    module.SimpleDecoder = SimpleDecoder
    module.PacketData = PacketData
    module.CreateDecoder = lambda **options: Decoder()
    return module


@pytest.fixture
def nvdec(monkeypatch):
    import daemon.gpu.nvdec as module

    fake = FakeCuda()
    monkeypatch.setattr(module, "cuda", fake)
    return module, fake


def copies(fake: FakeCuda) -> list:
    return [args for name, args, _ in fake.calls if name == "cuda.memcpy2d_dtod_async"]


def test_a_file_producer_copies_each_frame_out_in_one_copy_and_ends_at_the_frame_count(nvdec, monkeypatch):
    module, fake = nvdec
    frames = [FakeDecodedFrame(fake, 64, 48, 128, value) for value in range(3)]
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake_pynvvideocodec(frames))
    decoder_memory = fake.live_resources()  # the double decoder's own surfaces
    producer = module.NvdecProducer("clip.mp4", 4, threading.Event())
    images = []
    for frame in frames:
        assert producer.grab()
        image, pts = producer.retrieve()
        images.append((image, pts))
        assert np.array_equal(fake.device.view(image.y_ptr, image.nbytes), frame.expected_nv12()), "the frame's bytes, pitch removed"
        assert image.ready is not None and image.ready.recorded_on == producer._copier.stream.handle
    assert [rows for _, _, _, rows, _ in copies(fake)] == [48 + 24] * 3, "one copy per frame: chroma follows luma"
    assert [pts for _, pts in images] == [0.0, 40.0, 80.0] and (producer.width, producer.height) == (64, 48)
    assert not producer.grab(), "the end is the container's frame count"
    assert producer.rewind() and producer.grab()
    for image, _ in images:
        image.release()
    producer.close()
    assert fake.live_resources() == decoder_memory, "pool, events and stream all freed"


def test_planes_apart_take_two_copies(nvdec, monkeypatch):
    module, fake = nvdec
    frame = FakeDecodedFrame(fake, 64, 48, 128, 7, contiguous=False)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake_pynvvideocodec([frame]))
    producer = module.NvdecProducer("clip.mp4", 2, threading.Event())
    assert producer.grab()
    image, _ = producer.retrieve()
    assert [rows for _, _, _, rows, _ in copies(fake)] == [48, 24]
    assert np.array_equal(fake.device.view(image.y_ptr, image.nbytes), frame.expected_nv12())
    image.release()
    producer.close()


def test_a_network_producer_decodes_the_demuxer_s_packets_parameter_sets_first(nvdec, monkeypatch, camera):  # noqa: F811
    from daemon.demux import PacketStream

    module, fake = nvdec
    frames = [FakeDecodedFrame(fake, 64, 48, 64, value) for value in range(2)]
    nvc = fake_pynvvideocodec(frames)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", nvc)
    packets = PacketStream(camera.url, open_timeout_s=5, read_timeout_s=3)
    header = packets.header
    producer = module.NvdecStreamProducer(packets, 4, threading.Event())
    assert (producer.width, producer.height, producer.fps) == (640, 272, 25.0), "the demuxer's size until a frame says"
    for index in range(5):
        assert producer.grab()
        image, pts = producer.retrieve()
        assert pts is None and np.array_equal(fake.device.view(image.y_ptr, image.nbytes), frames[index % 2].expected_nv12())
        image.release()
    assert nvc.packets[0].startswith(header.extradata) and not nvc.packets[1].startswith(header.extradata)
    assert (producer.width, producer.height) == (64, 48)
    assert not producer.rewind(), "a camera does not rewind"
    child = packets.pid
    producer.close()
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_decoding_error_reads_as_no_frame_so_the_reader_reconnects(nvdec, monkeypatch, camera, caplog):  # noqa: F811
    from daemon.demux import PacketStream

    module, fake = nvdec
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake_pynvvideocodec([], decode_error=RuntimeError("picture too large")))
    producer = module.NvdecStreamProducer(PacketStream(camera.url, open_timeout_s=5, read_timeout_s=3), 4, threading.Event())
    assert not producer.grab()
    assert "NVDEC decoding failed (picture too large); reconnecting" in caplog.text
    producer.close()


def test_an_unknown_codec_is_refused_with_its_name(nvdec, monkeypatch, camera):  # noqa: F811
    from daemon.demux import PacketStream
    from daemon.errors import SourceError

    module, _ = nvdec
    nvc = fake_pynvvideocodec([])
    del nvc.cudaVideoCodec.H264
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", nvc)
    packets = PacketStream(camera.url, open_timeout_s=5, read_timeout_s=3)
    with pytest.raises(SourceError, match="NVDEC does not decode 'h264' streams") as caught:
        module.NvdecStreamProducer(packets, 4, threading.Event())
    assert not caught.value.retryable
