"""How frames decoded into pinned memory reach the GPU preprocessing kernel (``engine.frame_transfer``),
on the CUDA test double (no GPU here) and the TensorRT call-sequence double, with the NVRTC kernel
replaced by a recorder and the decoding kernel by a no-op (they cannot compile without CUDA): which copies are enqueued, and which source
address each row of the job table gives the kernel. That the three transfers give the same model input
on a real GPU is tests/test_gpu_tensorrt.py's."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from daemon.config import DetectionConfig, EngineConfig, ModelConfig
from daemon.serving import build_unit

from .test_tensorrt_backend import Fakes


class RecordingPreprocessor:
    """Stands in for the NVRTC preprocessing launch (a CUDA kernel cannot run here): records the job
    table the launch would read, as it sits in the double's device memory at launch time."""

    fake = None  # the CUDA double whose device memory holds the table
    launches: list = []

    def __init__(self, normalizer, pad_grey, dtype):
        pass

    def batch(self, stream, table_ptr, rows, dst_ptr, width, height):
        from daemon.gpu.preprocess import Job

        raw = bytes(RecordingPreprocessor.fake.device.view(table_ptr, ctypes.sizeof(Job) * rows))
        RecordingPreprocessor.launches.append([Job.from_buffer_copy(raw, i * ctypes.sizeof(Job)) for i in range(rows)])


class SilentDecoder:
    """Stands in for the NVRTC decoding kernel (not compiled here); its output is not looked at."""

    def __init__(self, layout, shape, candidates, dtype):
        self._candidates = candidates

    def output_shape(self, batch):
        return (batch, self._candidates, 6)

    def launch(self, stream, src_ptr, dst_ptr, rows):
        pass


@pytest.fixture
def staged(tmp_path, monkeypatch):
    """A loaded TensorRT backend on the doubles, GPU preprocessing configured by the serving factory,
    and three frames decoded into a pinned pool of the same CUDA double."""
    import daemon.gpu.decode as decode
    import daemon.gpu.preprocess as preprocess
    import daemon.pinned as pinned

    def make(transfer: str):
        fakes = Fakes("10.16", tmp_path)
        monkeypatch.setattr(pinned, "cuda", fakes.cuda)
        monkeypatch.setattr(preprocess, "GpuPreprocessor", RecordingPreprocessor)
        monkeypatch.setattr(decode, "DetectionDecoder", SilentDecoder)
        RecordingPreprocessor.fake, RecordingPreprocessor.launches = fakes.cuda, []
        engine = dict(streams=1, max_batch=4, frame_transfer=transfer)
        fakes.build(fakes.builder(**engine))
        backend = fakes.builder(**engine).load(fakes.plan_path)
        model = ModelConfig(path=fakes.model_path, pipeline="detection", labels=["a"] * 80, detection=DetectionConfig(pad_value=127))
        unit = build_unit(model, EngineConfig(preprocess="gpu", max_frame_size=(64, 48), max_batch=4), backend)
        pool = pinned.PinnedImagePool(3, (48, 64, 3))
        images = [pool.take() for _ in range(3)]
        for value, image in enumerate(images):
            image[...] = value + 1
        slot = backend.create_slot(0)
        for row, image in enumerate(images):
            backend.stage(slot, row, image, unit.pipeline)
        mark = len(fakes.calls)
        backend.submit(slot, 3)
        return fakes, backend, images, fakes.since(mark), slot

    return make


def test_copies_send_each_pinned_frame_with_its_own_copy(staged):
    fakes, backend, images, calls, slot = staged("copies")
    copies = [args for name, args in calls if name == "cuda.memcpy_htod_async"]
    assert len(copies) == 1 + 3 and [nbytes for _, nbytes, _ in copies[1:]] == [48 * 64 * 3] * 3  # the table, then each frame
    (jobs,) = RecordingPreprocessor.launches
    for job, image, (dst, _, _) in zip(jobs, images, copies[1:]):
        assert job.src == dst and (fakes.cuda.device.view(dst, image.nbytes) == image.reshape(-1)).all()
    assert backend.info.details["frame_transfer"] == "copies"
    backend.close()


def test_batched_sends_a_batch_of_pinned_frames_in_one_call(staged):
    fakes, backend, images, calls, slot = staged("batched")
    assert [name for name, _ in calls if name.startswith("cuda.memcpy_htod")] == ["cuda.memcpy_htod_async", "cuda.memcpy_htod_batch_async"]
    ((dsts, sizes, _),) = [args for name, args in calls if name == "cuda.memcpy_htod_batch_async"]
    assert sizes == (48 * 64 * 3,) * 3
    (jobs,) = RecordingPreprocessor.launches
    for job, image, dst in zip(jobs, images, dsts):
        assert job.src == dst and (fakes.cuda.device.view(dst, image.nbytes) == image.reshape(-1)).all()
    backend.close()


def test_batched_falls_back_to_copies_before_cuda_12_8(staged, monkeypatch):
    from tests.doubles.fake_cuda import FakeCuda

    monkeypatch.setattr(FakeCuda, "memcpy_batch_supported", lambda self: False)
    fakes, backend, images, calls, slot = staged("batched")
    assert backend.info.details["frame_transfer"] == "copies"
    assert len([name for name, _ in calls if name == "cuda.memcpy_htod_async"]) == 1 + 3
    backend.close()


def test_mapped_copies_no_frame_and_points_the_kernel_at_the_pinned_frames(staged):
    fakes, backend, images, calls, slot = staged("mapped")
    copies = [args for name, args in calls if name.startswith("cuda.memcpy_htod")]
    assert len(copies) == 1 and copies[0][1] < 48 * 64 * 3, "only the job table travels"
    (jobs,) = RecordingPreprocessor.launches
    assert [job.src for job in jobs] == [image.ctypes.data for image in images]
    assert [(job.src_w, job.src_h, job.pitch) for job in jobs] == [(64, 48, 64 * 3)] * 3
    backend.close()


def test_an_unknown_frame_transfer_is_refused_by_the_configuration():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frame_transfer"):
        EngineConfig(frame_transfer="zero-copy")


@pytest.mark.parametrize("hold", [True, False])
def test_the_runtime_makes_its_streams_as_engine_hold_gil_for_enqueues_says(tmp_path, hold):
    fakes = Fakes("10.16", tmp_path)
    engine = dict(streams=2, max_batch=4, hold_gil_for_enqueues=hold)
    fakes.build(fakes.builder(**engine))
    backend = fakes.builder(**engine).load(fakes.plan_path)
    assert [stream.hold_gil for stream in fakes.cuda.streams] == [hold, hold]
    assert backend.info.details["enqueues"] == ("hold the GIL" if hold else "release the GIL")
    backend.close()


def test_the_default_holds_the_gil_for_enqueues():
    assert EngineConfig().hold_gil_for_enqueues is True


def test_nvdec_frames_are_waited_for_on_the_gpu_before_the_preprocessing_launch(tmp_path, monkeypatch):
    """An NVDEC reader does not wait for the copy of its frame (daemon/gpu/nvdec.py): the batch's stream
    waits for each staged frame's ``ready`` event, before the launch that reads them; a frame written
    already (``ready`` None) adds no wait, and the waits do not carry over to the next batch."""
    import daemon.gpu.decode as decode
    import daemon.gpu.nvdec as nvdec
    import daemon.gpu.preprocess as preprocess

    fakes = Fakes("10.16", tmp_path)
    monkeypatch.setattr(nvdec, "cuda", fakes.cuda)
    monkeypatch.setattr(decode, "DetectionDecoder", SilentDecoder)
    launched_after: list[int] = []

    class OrderRecordingPreprocessor(RecordingPreprocessor):
        def batch(self, stream, table_ptr, rows, dst_ptr, width, height):
            launched_after.append(len(fakes.calls))
            super().batch(stream, table_ptr, rows, dst_ptr, width, height)

    monkeypatch.setattr(preprocess, "GpuPreprocessor", OrderRecordingPreprocessor)
    RecordingPreprocessor.fake, RecordingPreprocessor.launches = fakes.cuda, []
    engine = dict(streams=1, max_batch=4)
    fakes.build(fakes.builder(**engine))
    backend = fakes.builder(**engine).load(fakes.plan_path)
    model = ModelConfig(path=fakes.model_path, pipeline="detection", labels=["a"] * 80, detection=DetectionConfig(pad_value=127))
    unit = build_unit(model, EngineConfig(preprocess="gpu", max_frame_size=(64, 48), max_batch=4), backend)
    pool = nvdec.DeviceImagePool(3, 64 * 48 * 3 // 2)
    stop = threading.Event()
    frames = [nvdec.DeviceImage(pool, pool.take(stop), 64, 48) for _ in range(3)]
    frames[1].ready = None  # written already
    slot = backend.create_slot(0)
    for row, frame in enumerate(frames):
        backend.stage(slot, row, frame, unit.pipeline)
    mark = len(fakes.calls)
    backend.submit(slot, 3)
    stream = fakes.cuda.streams[0].handle
    waits = [(index, args) for index, (name, args, _) in enumerate(fakes.calls) if index >= mark and name == "cuda.Stream.wait_event"]
    assert [args for _, args in waits] == [(stream, frames[0].ready.id), (stream, frames[2].ready.id)]
    assert len(launched_after) == 1 and all(index < launched_after[0] for index, _ in waits), "the waits come before the launch"
    (jobs,) = RecordingPreprocessor.launches
    assert [job.src for job in jobs] == [frame.y_ptr for frame in frames]
    backend.wait(slot)
    pinned_image = np.zeros((48, 64, 3), np.uint8)
    backend.stage(slot, 0, pinned_image, unit.pipeline)
    mark = len(fakes.calls)
    backend.submit(slot, 1)
    assert not [name for name, _, _ in fakes.calls[mark:] if name == "cuda.Stream.wait_event"], "the next batch waits for nothing old"
    for frame in frames:
        frame.release()
    pool.close()
    backend.close()
