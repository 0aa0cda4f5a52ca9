"""The serving unit (backend + pipeline + model fields) and its one factory, used by the daemon at start,
for a background-built engine, on reload, and by the benchmarks. Real ONNX models and ONNX Runtime;
the TensorRT executor on the call-sequence doubles (no TensorRT here)."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.backends.onnxruntime import OnnxRuntimeBackend
from daemon.config import OnnxRuntimeConfig, parse_config
from daemon.errors import UserError
from daemon.serving import build_unit

from .conftest import asset


def detector_config(**engine):
    return parse_config({
        "sources": [{"id": "cam", "uri": "synthetic:64x48@5"}],
        "model": {"path": str(asset("models/yolov3_tiny_416.onnx")), "pipeline": "detection", "labels": str(asset("labels/coco.txt"))},
        "engine": {"backend": "onnxruntime", "max_batch": 2, **engine},
    })


def test_a_cpu_backend_serves_with_every_step_on_the_host():
    config = detector_config()
    backend = OnnxRuntimeBackend(config.model.path, 2, 1, OnnxRuntimeConfig())
    unit = build_unit(config.model, config.engine, backend)
    assert unit.backend is backend and unit.pipeline.kind == "detection"
    assert unit.model_info["id"].startswith("yolov3_tiny_416@") and len(unit.model_info["sha256"]) == 64
    assert not backend.info.preprocesses_on_device and not backend.info.decodes_on_device
    slot = backend.create_slot(0)
    image = np.full((48, 64, 3), 90, np.uint8)
    meta = backend.stage(slot, 0, image, unit.pipeline)
    backend.submit(slot, 1)
    assert unit.pipeline.postprocess_batch(backend.wait(slot), [meta]) == [{"detections": []}]
    backend.close()


def test_nvdec_sources_need_a_backend_that_takes_device_frames():
    config = detector_config()
    backend = OnnxRuntimeBackend(config.model.path, 2, 1, OnnxRuntimeConfig())
    with pytest.raises(UserError, match=r"sources \['door'\]: decoder = 'nvdec' needs a GPU backend"):
        build_unit(config.model, config.engine, backend, ["door"])
    backend.close()


def test_the_tensorrt_executor_declares_what_the_gpu_runtime_can_take(tmp_path):
    """On the call-sequence doubles: the TensorRT backend is the GPU runtime, and declares GPU
    preprocessing, device frames, device decoding and graphs (the service reads these; it never
    probes for methods). With preprocessing on the CPU its unit keeps the frames on the host."""
    from .test_tensorrt_backend import Fakes

    fakes = Fakes("11.1", tmp_path)
    builder = fakes.builder()
    fakes.build(builder)
    backend = builder.load(fakes.plan_path)
    capabilities = backend.info.capabilities
    assert (capabilities.gpu_preprocessing, capabilities.device_frames, capabilities.device_decoding) == (True, True, True)
    backend.close()


def test_the_cpu_benchmark_builds_its_engine_side_through_the_factory(monkeypatch):
    """``bench cpu``'s engine-only side stages frames into a unit made by ``build_unit``, as the daemon does."""
    import daemon.bench.cpu as bench_cpu

    made = []

    def spy(*args, **kwargs):
        unit = build_unit(*args, **kwargs)
        made.append(unit)
        return unit

    monkeypatch.setattr(bench_cpu, "build_unit", spy)
    config = detector_config()
    frames = [np.full((48, 64, 3), value, np.uint8) for value in (10, 200)]
    assert bench_cpu.engine_only(config, frames, 2, 4) > 0
    assert len(made) == 1 and made[0].pipeline.kind == "detection"
