"""The TensorRT adapter against test doubles of TensorRT and of the CUDA layer (``tests/doubles``).

TensorRT cannot run here, so these tests prove the call sequence the adapter makes, on the API surface of
TensorRT 11.1 and 10.16 (the double rejects names a release lacks), and that data really moves through the
slots: pinned input -> fake device -> "inference" -> fake device -> pinned output. They do not prove that
TensorRT builds or runs anything.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import daemon.cuda
from daemon.backends.base import InferenceBackend
from daemon.backends.tensorrt import TensorRTBuilder, TrtLogger, trt_major
from daemon.config import EngineConfig, ModelConfig, TensorRTConfig
from daemon.engine.artifact import ArtifactInvalid
from daemon.errors import BackendError

from .doubles.fake_cuda import FakeCuda
from .doubles.fake_tensorrt import PLAN_MAGIC, FakeModel, FakeTensor, FakeTensorRT

VERSIONS = ("11.1", "10.16")


class Fakes:
    """Both doubles sharing one call record, and a builder wired to them."""

    def __init__(self, version: str, tmp_path: Path, model: FakeModel | None = None):
        self.calls: list = []
        self.cuda = FakeCuda(self.calls)
        self.trt = FakeTensorRT(version, calls=self.calls, device=self.cuda.device, model=model)
        self.module = self.trt.module
        self.model_path = tmp_path / "yolo.onnx"
        self.model_path.write_bytes(b"fake onnx bytes")
        self.plan_path = tmp_path / "yolo.engine"
        self.cache_path = tmp_path / "cache" / "timing.cache"
        self.progress: list[tuple[float, str]] = []

    def builder(self, input_size=None, **engine) -> TensorRTBuilder:
        tensorrt = engine.pop("tensorrt", {})
        engine.setdefault("max_batch", 4)
        engine.setdefault("streams", 2)
        model = ModelConfig(path=self.model_path, pipeline="detection", input_size=input_size)
        return TensorRTBuilder(model, EngineConfig(tensorrt=TensorRTConfig(**tensorrt), **engine), trt=self.module, cuda=self.cuda)

    def build(self, builder: TensorRTBuilder) -> None:
        builder.build(self.model_path, self.plan_path, self.cache_path, lambda f, m: self.progress.append((f, m)))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def args(self, name: str) -> list[tuple]:
        return [args for n, args, _ in self.calls if n == name]

    def since(self, mark: int) -> list[tuple[str, tuple]]:
        return [(name, args) for name, args, _ in self.calls[mark:]]


@pytest.fixture(params=VERSIONS)
def fakes(request, tmp_path) -> Fakes:
    return Fakes(request.param, tmp_path)


def assert_in_order(names: list[str], expected: list[str]) -> None:
    """``expected`` occurs in ``names`` in this order (other calls may come between)."""
    position = 0
    for name in expected:
        try:
            position = names.index(name, position) + 1
        except ValueError:
            raise AssertionError(f"{name!r} missing (or out of order) after position {position} in {names}") from None


def flag(fakes: Fakes, enum: str, member: str):
    return getattr(getattr(fakes.module, enum), member)


# -- the doubles themselves --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_the_fake_module_has_exactly_the_surface_of_its_release(version):
    trt = FakeTensorRT(version).module
    assert trt.__version__ == {"11.1": "11.1.0.106", "10.16": "10.16.0.72"}[version]
    if version == "11.1":
        with pytest.raises(AttributeError, match="FP16"):
            trt.BuilderFlag.FP16
        with pytest.raises(AttributeError):
            trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
        with pytest.raises(AttributeError):
            trt.IInt8EntropyCalibrator2
    else:
        assert trt.BuilderFlag.FP16 != trt.BuilderFlag.INT8
    with pytest.raises(AttributeError):
        trt.Builder.build_engine  # removed in 10.0
    with pytest.raises(AttributeError):
        trt.not_a_tensorrt_name
    with pytest.raises(NotImplementedError):  # real, but not implemented by the double: never silently accepted
        trt.Refitter(None, None)


def test_fake_cuda_has_the_names_and_signatures_of_daemon_cuda():
    fake = FakeCuda()
    for name in daemon.cuda.__all__:
        real = getattr(daemon.cuda, name)
        double = getattr(fake, name)
        if inspect.isclass(real) and issubclass(real, Exception):
            assert double is real
            continue
        if inspect.isclass(real):
            assert list(inspect.signature(double).parameters) == list(inspect.signature(real).parameters), name
            methods = {m for m, _ in inspect.getmembers(real, inspect.isfunction) if not m.startswith("_")}
            for method in methods:
                assert list(inspect.signature(getattr(double, method)).parameters) == list(
                    inspect.signature(getattr(real, method)).parameters
                ), f"{name}.{method}"
        else:
            assert list(inspect.signature(double).parameters) == list(inspect.signature(real).parameters), name


# -- build ---------------------------------------------------------------------------------------------------


def test_build_sequence(fakes, caplog):
    fakes.cache_path.parent.mkdir()
    fakes.cache_path.write_bytes(b"CACHE0;")
    builder = fakes.builder()
    with caplog.at_level(logging.WARNING, "trtstream.backends.tensorrt"):
        fakes.build(builder)
    trt = fakes.module
    v11 = fakes.trt.version == "11.1"

    assert_in_order(
        fakes.names(),
        [
            "init_libnvinfer_plugins",
            "Builder",
            "Builder.create_network",
            "OnnxParser",
            "OnnxParser.parse",
            "Builder.create_builder_config",
            "IBuilderConfig.set_memory_pool_limit",
            "Builder.create_optimization_profile",
            "IOptimizationProfile.set_shape",
            "IBuilderConfig.add_optimization_profile",
            "IBuilderConfig.create_timing_cache",
            "IBuilderConfig.set_timing_cache",
            "Builder.build_serialized_network",
            "IBuilderConfig.get_timing_cache",
            "ITimingCache.serialize",
        ],
    )
    # strongly typed on 11 (always), not on 10 unless asked; the flag's value differs between them
    expected_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if v11 else 0
    assert fakes.args("Builder.create_network") == [(expected_flags,)]
    assert fakes.trt.plans[-1]["strongly_typed"] is v11
    # the model bytes, with the path for external weights
    (data, *_), kwargs = fakes.trt.find("OnnxParser.parse")[0]
    assert data == b"fake onnx bytes" and kwargs == {"path": str(fakes.model_path)}
    assert fakes.args("IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 1024 << 20)]
    assert fakes.args("IOptimizationProfile.set_shape") == [("images", (1, 3, 416, 416), (4, 3, 416, 416), (4, 3, 416, 416))]
    # precision fp16 (the default): a builder flag on 10 only; on 11 a warning that the ONNX must be FP16
    set_flags = [args[0] for args in fakes.args("IBuilderConfig.set_flag")]
    if v11:
        assert set_flags == []
        assert "trtstream convert --fp16" in caplog.text
    else:
        assert set_flags == [trt.BuilderFlag.FP16]
        assert "convert" not in caplog.text
    # timing cache: read from the file, checked against this device, written back whole
    assert fakes.args("IBuilderConfig.create_timing_cache") == [(b"CACHE0;",)]
    assert fakes.args("IBuilderConfig.set_timing_cache")[0][1] is False  # ignore_mismatch=False
    assert fakes.cache_path.read_bytes() == b"CACHE0;entry:images;"
    assert not [p for p in fakes.cache_path.parent.iterdir() if p != fakes.cache_path]  # no temporary left
    # the plan is written whole
    plan = fakes.plan_path.read_bytes()
    assert plan.startswith(PLAN_MAGIC) and json.loads(plan[len(PLAN_MAGIC):]) == fakes.trt.plans[-1]
    fractions = [f for f, _ in fakes.progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


def test_build_options_reach_the_builder_config(fakes):
    options = {"builder_optimization_level": 5, "hardware_compatibility": "ampere_plus", "workspace_mb": 64}
    fakes.build(fakes.builder(max_batch=8, tensorrt=dict(options, min_batch=2, opt_batch=6)))
    trt = fakes.module
    assert fakes.args("IBuilderConfig.builder_optimization_level=") == [(5,)]
    assert fakes.args("IBuilderConfig.hardware_compatibility_level=") == [(trt.HardwareCompatibilityLevel.AMPERE_PLUS,)]
    assert fakes.args("IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 64 << 20)]
    assert fakes.args("IOptimizationProfile.set_shape") == [("images", (2, 3, 416, 416), (6, 3, 416, 416), (8, 3, 416, 416))]
    assert fakes.trt.plans[-1]["hardware_compatibility_level"] == "AMPERE_PLUS"


def test_strongly_typed_on_10_sets_the_flag_and_no_precision_flag(tmp_path, caplog):
    fakes = Fakes("10.16", tmp_path)
    with caplog.at_level(logging.WARNING):
        fakes.build(fakes.builder(tensorrt={"strongly_typed": True}))
    assert fakes.args("Builder.create_network") == [(1 << 1,)]  # STRONGLY_TYPED is 1 in 10.x
    assert fakes.args("IBuilderConfig.set_flag") == []
    assert "trtstream convert --fp16" in caplog.text


@pytest.mark.parametrize("precision, member", [("fp32", None), ("fp16", "FP16"), ("int8", "INT8"), ("fp8", "FP8")])
def test_precision_flags_on_10(tmp_path, precision, member, caplog):
    fakes = Fakes("10.16", tmp_path)
    with caplog.at_level(logging.WARNING):
        fakes.build(fakes.builder(tensorrt={"precision": precision}))
    expected = [] if member is None else [(getattr(fakes.module.BuilderFlag, member),)]
    assert fakes.args("IBuilderConfig.set_flag") == expected
    assert ("Q/DQ" in caplog.text) is (precision in ("int8", "fp8"))  # no Q/DQ layers in the fake model


def test_an_fp16_onnx_builds_on_11_without_a_warning(tmp_path, caplog):
    model = FakeModel(layers=[("CAST", "HALF"), ("CONVOLUTION", "HALF"), ("CAST", "FLOAT")])
    fakes = Fakes("11.1", tmp_path, model=model)
    with caplog.at_level(logging.WARNING):
        fakes.build(fakes.builder())
    assert "convert" not in caplog.text
    assert fakes.args("IBuilderConfig.set_flag") == []


def test_every_parser_error_is_reported(fakes):
    fakes.trt.parser_errors = ["Unsupported operator NonMaxSuppression", "Input 'scores' has no shape", "third problem"]
    with pytest.raises(BackendError) as caught:
        fakes.build(fakes.builder())
    message = str(caught.value)
    assert "3 error(s)" in message
    for error in fakes.trt.parser_errors:
        assert error in message
    assert "Builder.build_serialized_network" not in fakes.names()
    assert not fakes.plan_path.exists()


def test_a_failed_build_reports_what_tensorrt_logged(fakes):
    fakes.trt.build_error = "Internal Error: out of memory while tuning tactic 0x42"
    with pytest.raises(BackendError, match="out of memory while tuning tactic 0x42"):
        fakes.build(fakes.builder())
    assert not fakes.plan_path.exists()


def test_dynamic_dimensions_besides_the_batch_need_input_size(tmp_path):
    model = FakeModel(inputs=[FakeTensor("images", (-1, 3, -1, -1))])
    fakes = Fakes("11.1", tmp_path, model=model)
    with pytest.raises(BackendError, match="model.input_size"):
        fakes.build(fakes.builder())
    fakes = Fakes("11.1", tmp_path, model=model)
    fakes.build(fakes.builder(input_size=(640, 480)))
    assert fakes.args("IOptimizationProfile.set_shape") == [("images", (1, 3, 480, 640), (4, 3, 480, 640), (4, 3, 480, 640))]
    fakes = Fakes("11.1", tmp_path, model=FakeModel(inputs=[FakeTensor("images", (-1, -1, -1, 3))]))  # channels last
    fakes.build(fakes.builder(input_size=(640, 480)))
    assert fakes.args("IOptimizationProfile.set_shape") == [("images", (1, 480, 640, 3), (4, 480, 640, 3), (4, 480, 640, 3))]


def test_a_static_batch_model_needs_no_profile(tmp_path):
    model = FakeModel(inputs=[FakeTensor("images", (1, 3, 416, 416))], outputs=[FakeTensor("output", (1, 2535, 85))])
    fakes = Fakes("10.16", tmp_path, model=model)
    fakes.build(fakes.builder())
    assert "IBuilderConfig.add_optimization_profile" not in fakes.names()
    backend = fakes.builder().load(fakes.plan_path)
    assert backend.info.max_batch == 1  # lowered from engine.max_batch to what the engine takes
    slot = backend.create_slot(0)
    slot.inputs["images"][0] = 7
    mark = len(fakes.calls)
    backend.submit(slot, 1)
    assert "IExecutionContext.set_input_shape" not in [n for n, _ in fakes.since(mark)]  # the shape is fixed
    assert "IExecutionContext.execute_async_v3" in [n for n, _ in fakes.since(mark)]
    assert backend.wait(slot)["output"][0, 0, 0] == 7
    backend.close()


def test_an_unusable_timing_cache_is_replaced(fakes, caplog):
    fakes.cache_path.parent.mkdir()
    fakes.cache_path.write_bytes(b"OTHERGPU cache")
    with caplog.at_level(logging.WARNING):
        fakes.build(fakes.builder())
    assert fakes.args("IBuilderConfig.create_timing_cache") == [(b"OTHERGPU cache",), (b"",)]
    assert "does not match" in caplog.text
    assert fakes.cache_path.read_bytes() == b"entry:images;"


def test_no_timing_cache_path_means_no_timing_cache(fakes):
    fakes.builder().build(fakes.model_path, fakes.plan_path, None, lambda f, m: None)
    assert "IBuilderConfig.create_timing_cache" not in fakes.names()
    assert fakes.plan_path.read_bytes().startswith(PLAN_MAGIC)


def test_plugins_are_loaded_before_tensorrt_is_used(fakes, tmp_path):
    libm = Path("/lib/x86_64-linux-gnu/libm.so.6")
    if not libm.is_file():
        pytest.skip("needs a shared library to stand in for a plugin")
    fakes.build(fakes.builder(tensorrt={"plugins": [libm]}))
    assert fakes.names()[0] == "init_libnvinfer_plugins"
    missing = tmp_path / "libmissing_plugin.so"
    with pytest.raises(BackendError, match="cannot load"):
        fakes.build(fakes.builder(tensorrt={"plugins": [missing]}))


# -- fingerprint ------------------------------------------------------------------------------------------


def test_fingerprint_has_versions_device_and_every_option(fakes, tmp_path):
    plugin = tmp_path / "libplugin.so"
    plugin.write_bytes(b"plugin v1")
    builder = fakes.builder(tensorrt={"plugins": [plugin]})
    fp = builder.fingerprint()
    json.dumps(fp)  # JSON-serialisable
    assert fp["backend"] == "tensorrt"
    assert fp["tensorrt"] == fakes.module.__version__ and fp["tensorrt_major"] == trt_major(fakes.module)
    assert (fp["gpu"], fp["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert (fp["cuda_runtime"], fp["cuda_driver"]) == ("13.0", "13.1")
    assert set(TensorRTConfig.model_fields) <= set(fp["options"])
    assert fp["options"]["max_batch"] == 4 and fp["options"]["opt_batch"] == 4
    import hashlib

    assert fp["options"]["plugins"] == [{"path": str(plugin), "sha256": hashlib.sha256(b"plugin v1").hexdigest()}]
    plugin.write_bytes(b"plugin v2")
    assert builder.fingerprint() != fp
    for change in ({"precision": "fp32"}, {"workspace_mb": 2048}, {"builder_optimization_level": 4}, {"version_compatible": True}):
        assert fakes.builder(tensorrt={"plugins": [plugin], **change}).fingerprint()["options"] != builder.fingerprint()["options"]
    assert fakes.builder(max_batch=8, tensorrt={"plugins": [plugin]}).fingerprint() != builder.fingerprint()


def test_bad_batch_range_is_a_clear_error(fakes):
    with pytest.raises(BackendError, match="min_batch <= opt_batch"):
        fakes.builder(max_batch=4, tensorrt={"opt_batch": 8})


# -- load ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_plan_is_artifact_invalid(fakes, damage):
    builder = fakes.builder()
    fakes.build(builder)
    plan = fakes.plan_path.read_bytes()
    fakes.plan_path.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else plan[: len(plan) // 2])
    with pytest.raises(ArtifactInvalid, match="Magic tag" if damage == "garbage" else "truncated"):
        builder.load(fakes.plan_path)


def test_a_plan_from_another_tensorrt_is_artifact_invalid(tmp_path):
    old = Fakes("10.16", tmp_path)
    old.build(old.builder())
    new = Fakes("11.1", tmp_path)
    with pytest.raises(ArtifactInvalid, match="Version tag does not match"):
        new.builder().load(old.plan_path)


def test_a_missing_plan_is_artifact_invalid(fakes):
    with pytest.raises(ArtifactInvalid, match="cannot read"):
        fakes.builder().load(fakes.plan_path)


def test_load_checks_the_profile_covers_the_batch(fakes):
    fakes.build(fakes.builder(max_batch=4, tensorrt={"min_batch": 2}))
    with pytest.raises(ArtifactInvalid, match="accepts batches 2..4, not 2..8"):
        fakes.builder(max_batch=8, tensorrt={"min_batch": 2}).load(fakes.plan_path)
    with pytest.raises(ArtifactInvalid, match="accepts batches 2..4, not 1..4"):
        fakes.builder(max_batch=4).load(fakes.plan_path)
    fakes.builder(max_batch=4, tensorrt={"min_batch": 2}).load(fakes.plan_path).close()


def test_load_checks_io(fakes):
    fakes.build(fakes.builder())
    plan = json.loads(fakes.plan_path.read_bytes()[len(PLAN_MAGIC):])
    plan["outputs"] = []
    fakes.plan_path.write_bytes(PLAN_MAGIC + json.dumps(plan).encode())
    with pytest.raises(ArtifactInvalid, match="at least one input and one output"):
        fakes.builder().load(fakes.plan_path)
    plan["outputs"] = [{"name": "output", "shape": [-1, 2535, 85], "dtype": "BF16"}]
    fakes.plan_path.write_bytes(PLAN_MAGIC + json.dumps(plan).encode())
    with pytest.raises(BackendError, match="numpy cannot hold"):
        fakes.builder().load(fakes.plan_path)


def test_loaded_backend_info_and_one_context_per_stream(fakes):
    fakes.build(fakes.builder(streams=3))
    mark = len(fakes.calls)
    backend = fakes.builder(streams=3).load(fakes.plan_path)
    assert isinstance(backend, InferenceBackend)
    assert_in_order([n for n, _ in fakes.since(mark)], ["Runtime", "Runtime.deserialize_cuda_engine"])
    info = backend.info
    assert (info.name, info.version, info.device) == ("tensorrt", fakes.module.__version__, "NVIDIA H100 80GB HBM3")
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("images", np.dtype(np.float32), (-1, 3, 416, 416))]
    assert [(t.name, t.dtype, t.shape) for t in info.outputs] == [("output", np.dtype(np.float32), (-1, 2535, 85))]
    assert info.max_batch == 4 and info.details["streams"] == 3
    assert len(fakes.args("ICudaEngine.create_execution_context")) == 3
    assert len(fakes.trt.contexts) == 3
    assert len(fakes.cuda.streams) == 3
    backend.close()


# -- serving ------------------------------------------------------------------------------------------------


def loaded(fakes: Fakes, **engine):
    fakes.build(fakes.builder(**engine))
    return fakes.builder(**engine).load(fakes.plan_path)


def test_submit_sequence_per_slot_and_outputs_round_trip(fakes):
    backend = loaded(fakes, streams=2, max_batch=4)
    slots = [backend.create_slot(i) for i in range(3)]  # slots 0 and 2 share stream 0, slot 1 has stream 1
    streams = fakes.cuda.streams
    row_bytes_in = 3 * 416 * 416 * 4
    row_bytes_out = 2535 * 85 * 4

    for slot, n in ((slots[1], 3), (slots[2], 2)):
        stream = streams[slot.index % 2]
        context = fakes.trt.contexts[slot.index % 2]
        slot.inputs["images"][:] = 0
        for b in range(n):
            slot.inputs["images"][b] = 10 * slot.index + b + 1
        mark = len(fakes.calls)
        backend.submit(slot, n)
        calls = fakes.since(mark)
        htod_ptr = calls[0][1][0]
        dtoh = [args for name, args in calls if name == "cuda.memcpy_dtoh_async"]
        out_ptr = dtoh[0][0]
        event_id = [args for name, args in calls if name == "cuda.Event.record"][0][0]
        assert calls == [
            ("cuda.memcpy_htod_async", (htod_ptr, n * row_bytes_in, stream.handle)),
            ("IExecutionContext.set_input_shape", ("images", (n, 3, 416, 416))),
            ("IExecutionContext.set_tensor_address", ("images", htod_ptr)),
            ("IExecutionContext.set_tensor_address", ("output", out_ptr)),
            ("IExecutionContext.execute_async_v3", (stream.handle,)),
            ("cuda.memcpy_dtoh_async", (out_ptr, n * row_bytes_out, stream.handle)),
            ("cuda.Event.record", (event_id, stream.handle)),
        ]
        assert context._addresses == {"images": htod_ptr, "output": out_ptr}  # this slot's context, this slot's buffers

        outputs = backend.wait(slot)
        assert outputs["output"].shape == (n, 2535, 85)
        for b in range(n):
            assert np.all(outputs["output"][b] == 10 * slot.index + b + 1)
        assert not slot.outputs["output"][n:].any()  # only n rows copied back
        assert ("cuda.Event.synchronize", (event_id,)) in fakes.since(mark)

    # slots never share buffers or events; slots on one stream share its context
    pointers = [args[0] for args in fakes.args("cuda.memcpy_htod_async")]
    assert len(set(pointers)) == 2
    backend.close()


def test_wait_with_a_timeout_queries_the_event(fakes):
    backend = loaded(fakes)
    slot = backend.create_slot(0)
    backend.submit(slot, 1)
    assert backend.wait(slot, timeout=300)["output"].shape == (1, 2535, 85)
    assert "cuda.Event.query" in fakes.names()
    backend.close()


def test_submit_rejects_a_batch_outside_the_engine(fakes):
    backend = loaded(fakes)
    slot = backend.create_slot(0)
    for n in (0, 5):
        with pytest.raises(BackendError, match="1..4"):
            backend.submit(slot, n)
    backend.close()


def test_close_frees_everything_once(fakes):
    backend = loaded(fakes, streams=2)
    slots = [backend.create_slot(i) for i in range(4)]
    backend.submit(slots[0], 2)
    backend.wait(slots[0])
    assert fakes.cuda.live_resources() == 4 * 5 + 2  # per slot: 2 pinned + 2 device + 1 event; 2 streams
    mark = len(fakes.calls)
    backend.close()
    assert fakes.cuda.live_resources() == 0
    closing = [n for n, _ in fakes.since(mark)]
    assert closing[:2] == ["cuda.Stream.synchronize"] * 2  # nothing in flight before freeing
    assert closing[-2:] == ["cuda.Stream.close"] * 2  # streams last
    backend.close()
    assert len(fakes.calls) == mark + len(closing)
    with pytest.raises(BackendError, match="closed"):
        backend.submit(slots[1], 1)


# -- version compatibility and DLA ----------------------------------------------------------------------------


def test_version_compatible_plans_allow_host_code_when_loading(fakes):
    builder = fakes.builder(tensorrt={"version_compatible": True})
    fakes.build(builder)
    assert (fakes.module.BuilderFlag.VERSION_COMPATIBLE,) in fakes.args("IBuilderConfig.set_flag")
    backend = builder.load(fakes.plan_path)
    assert fakes.args("Runtime.engine_host_code_allowed=") == [(True,)]
    backend.close()
    # the same plan through a runtime that does not allow host code cannot load
    with pytest.raises(ArtifactInvalid, match="host code"):
        fakes.builder().load(fakes.plan_path)


def test_a_version_compatible_10_plan_loads_on_11(tmp_path):
    old = Fakes("10.16", tmp_path)
    old.build(old.builder(tensorrt={"version_compatible": True}))
    new = Fakes("11.1", tmp_path)
    new.builder(tensorrt={"version_compatible": True}).load(old.plan_path).close()


def test_dla_on_10(tmp_path):
    fakes = Fakes("10.16", tmp_path)
    fakes.trt.dla_cores = 2
    builder = fakes.builder(tensorrt={"dla_core": 1})
    fakes.build(builder)
    trt = fakes.module
    assert fakes.args("IBuilderConfig.default_device_type=") == [(trt.DeviceType.DLA,)]
    assert fakes.args("IBuilderConfig.DLA_core=") == [(1,)]
    assert (trt.BuilderFlag.GPU_FALLBACK,) in fakes.args("IBuilderConfig.set_flag")
    builder.load(fakes.plan_path).close()
    assert fakes.args("Runtime.DLA_core=") == [(1,)]
    with pytest.raises(BackendError, match="2 DLA core"):
        fakes.build(fakes.builder(tensorrt={"dla_core": 2}))


def test_dla_on_11_is_an_error(tmp_path):
    fakes = Fakes("11.1", tmp_path)
    with pytest.raises(BackendError, match="DLA needs TensorRT 10"):
        fakes.builder(tensorrt={"dla_core": 0})


# -- the logger -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_trt_logger_maps_severities_and_keeps_errors(version, caplog):
    trt = FakeTensorRT(version).module
    logger = TrtLogger.create(trt)
    assert isinstance(logger, trt.ILogger) and isinstance(logger, TrtLogger)
    severity = trt.ILogger.Severity
    with caplog.at_level(1, "trtstream.tensorrt"):
        logger.log(severity.VERBOSE, "v")
        logger.log(severity.INFO, "i")
        logger.log(severity.WARNING, "w")
        logger.log(severity.ERROR, "e1")
        logger.log(severity.INTERNAL_ERROR, "e2")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {
        "TensorRT: v": 5,
        "TensorRT: i": logging.DEBUG,
        "TensorRT: w": logging.WARNING,
        "TensorRT: e1": logging.ERROR,
        "TensorRT: e2": logging.CRITICAL,
    }
    assert logger.last_errors() == ["e1", "e2"]
    assert logger.describe_errors() == "e1; e2"


def test_a_batch_smaller_than_the_profile_minimum_runs_padded_and_returns_its_own_rows(fakes):
    """engine.tensorrt.min_batch = 2: the scheduler's partial batch of 1 runs as a batch of 2 (the profile
    rejects 1); only the one real row is copied in and back."""
    backend = loaded(fakes, max_batch=4, tensorrt={"min_batch": 2})
    slot = backend.create_slot(0)
    slot.inputs["images"][0] = 7
    mark = len(fakes.calls)
    backend.submit(slot, 1)
    calls = fakes.since(mark)
    assert ("IExecutionContext.set_input_shape", ("images", (2, 3, 416, 416))) in calls
    row_in, row_out = 3 * 416 * 416 * 4, 2535 * 85 * 4
    assert [args[1] for name, args in calls if name == "cuda.memcpy_htod_async"] == [row_in]
    assert [args[1] for name, args in calls if name == "cuda.memcpy_dtoh_async"] == [row_out]
    assert backend.wait(slot)["output"].shape == (1, 2535, 85)
    backend.close()


def test_an_uncached_engine_leaves_no_plan_file_behind(fakes, monkeypatch, tmp_path):
    """engine.use_cache = false with TensorRT (the double): the plan is built into a scratch folder,
    loaded, and the folder is gone once the backend serves."""
    import tempfile

    import daemon.backends as backends
    import daemon.engine.builders as builders

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    monkeypatch.setattr(backends, "available_backends", lambda: {"tensorrt": True, "onnxruntime": True, "torch": False})
    builder = fakes.builder(max_batch=2)
    monkeypatch.setattr(builders, "create_builder", lambda model, engine, name: builder)
    backend = backends.create_backend(builder._model, EngineConfig(backend="tensorrt", max_batch=2, use_cache=False))
    assert list(scratch_root.iterdir()) == []
    slot = backend.create_slot(0)
    backend.submit(slot, 1)
    assert backend.wait(slot)["output"].shape == (1, 2535, 85)
    backend.close()


# -- CUDA graphs and the device index (the GPU runtime around the TensorRT executor) ------------------------


def test_each_slot_captures_execute_async_v3_per_batch_size_and_replays_it(fakes):
    """trtexec's pattern per slot and batch size (1, 2, 4): shapes and addresses set, one warm enqueue,
    a stream sync, then a captured enqueue. A batch then replays the smallest graph that holds it: no
    TensorRT call on the hot path. (The CUDA double re-runs the captured enqueue to move the data.)"""
    fakes.cuda.capture = True
    backend = loaded(fakes, streams=1, max_batch=4)
    assert backend.info.details["cuda_graphs"] is True and backend.info.capabilities.cuda_graphs
    mark = len(fakes.calls)
    slot = backend.create_slot(0)
    calls = [name for name, _ in fakes.since(mark)]
    for size in (1, 2, 4):
        assert ("IExecutionContext.set_input_shape", ("images", (size, 3, 416, 416))) in fakes.since(mark)
    assert calls.count("cuda.capture_graph") == 3 and calls.count("IExecutionContext.execute_async_v3") == 6
    assert_in_order(calls, ["IExecutionContext.execute_async_v3", "cuda.Stream.synchronize", "cuda.capture_graph", "IExecutionContext.execute_async_v3"])
    for b in range(3):
        slot.inputs["images"][b] = b + 1
    mark = len(fakes.calls)
    backend.submit(slot, 3)  # replays the graph of 4
    assert [name for name, _ in fakes.since(mark)] == ["cuda.memcpy_htod_async", "cuda.CudaGraph.launch", "cuda.memcpy_dtoh_async", "cuda.Event.record"]
    outputs = backend.wait(slot)["output"]
    assert outputs.shape == (3, 2535, 85) and [float(outputs[b, 0, 0]) for b in range(3)] == [1.0, 2.0, 3.0]
    backend.close()
    assert fakes.cuda.live_resources() == 0, "graphs are freed with the slots"


def test_an_engine_that_cannot_be_captured_runs_with_plain_enqueues(fakes, caplog):
    with caplog.at_level(logging.WARNING):
        backend = loaded(fakes, streams=1)
        slot = backend.create_slot(0)
    assert "CUDA graph capture failed" in caplog.text and backend.info.details["cuda_graphs"] is False
    mark = len(fakes.calls)
    backend.submit(slot, 1)
    assert "IExecutionContext.execute_async_v3" in [name for name, _ in fakes.since(mark)]
    backend.close()


def test_engine_device_selects_the_gpu_of_the_runtime_and_of_the_fingerprint(fakes):
    builder = fakes.builder(device=1)
    assert builder.fingerprint()["gpu"] == "NVIDIA H100 80GB HBM3"
    fakes.build(builder)
    mark = len(fakes.calls)
    backend = builder.load(fakes.plan_path)
    assert ("cuda.set_device", (1,)) in fakes.since(mark)
    assert backend.info.device.endswith("(cuda:1)")
    backend.close()


def test_configure_without_device_work_keeps_the_host_paths(fakes):
    from daemon.backends.base import DeviceWork

    backend = loaded(fakes)
    assert backend.info.capabilities.gpu_preprocessing and backend.info.capabilities.device_frames
    assert backend.configure(DeviceWork()) == DeviceWork()
    assert not backend.info.preprocesses_on_device and not backend.info.decodes_on_device
    backend.close()
