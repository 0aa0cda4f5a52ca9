"""A TEST DOUBLE of PyNvVideoCodec for the NVDEC decoding process on a machine without an NVIDIA driver
(tests/test_nvdec_process.py puts this folder first on the child's PYTHONPATH). Its "device" memory is
host memory: each decoded frame is an NV12 picture in a numpy array whose planes are described as
PyNvVideoCodec describes them (``__cuda_array_interface__``, shape as a list, pitched rows). Frame ``i``
of a file holds the byte ``(i * 7 + row) % 251`` in each luma row and ``200 - i % 50`` in its chroma, so a
test can tell every frame and every row apart. That NVDEC decodes is a GPU test (tests/test_gpu.py)."""

from __future__ import annotations

import os
import types

import numpy as np

WIDTH, HEIGHT, PITCH = 64, 48, 128  # pitched wider than the picture, as NVDEC's surfaces are
FRAMES = int(os.environ.get("FAKE_NVDEC_FRAMES", "20"))
FPS = 25.0

OutputColorType = types.SimpleNamespace(NATIVE="native")
cudaVideoCodec = types.SimpleNamespace(H264="H264", HEVC="HEVC")


def picture(index: int) -> np.ndarray:
    """Frame ``index`` as the decoder's surface: HEIGHT * 3 / 2 rows of PITCH bytes."""
    surface = np.zeros((HEIGHT * 3 // 2, PITCH), np.uint8)
    surface[:HEIGHT, :WIDTH] = ((index * 7 + np.arange(HEIGHT)) % 251)[:, None]
    surface[HEIGHT:, :WIDTH] = 200 - index % 50
    return surface


class _Plane:
    def __init__(self, surface: np.ndarray, row: int, rows: int):
        self.__cuda_array_interface__ = {"shape": [rows, WIDTH, 1], "strides": (PITCH, 1, 1), "typestr": "|u1", "version": 3,
                                         "data": (surface.ctypes.data + row * PITCH, False)}


class DecodedFrame:
    def __init__(self, index: int):
        self.surface = picture(index)  # kept alive with the frame, as the decoder keeps its surfaces

    def cuda(self):
        return [_Plane(self.surface, 0, HEIGHT), _Plane(self.surface, HEIGHT, HEIGHT // 2)]


class SimpleDecoder:
    def __init__(self, path, **options):
        if not os.path.isfile(path):
            raise RuntimeError(f"cannot open {path}")
        self._next = 0

    def get_stream_metadata(self):
        return types.SimpleNamespace(average_fps=FPS, num_frames=FRAMES, width=WIDTH, height=HEIGHT)

    def get_batch_frames(self, count):
        if self._next >= FRAMES:
            return []
        self._next += 1
        return [DecodedFrame(self._next - 1)]

    def seek_to_index(self, index):
        self._next = index


class PacketData:
    bsl_data = 0
    bsl = 0


class _Decoder:
    """One picture per packet, numbered in arrival order."""

    def __init__(self):
        self._next = 0

    def Decode(self, packet):  # noqa: N802 (PyNvVideoCodec's name)
        self._next += 1
        return [DecodedFrame(self._next - 1)]


def CreateDecoder(**options):  # noqa: N802 (PyNvVideoCodec's name)
    return _Decoder()
