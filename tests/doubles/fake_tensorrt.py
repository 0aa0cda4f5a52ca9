"""A TEST DOUBLE of the ``tensorrt`` Python module: ``FakeTensorRT(version).module`` is passed where code takes ``trt``.

It stands in for TensorRT, which cannot be installed on CPU machines; it proves the call sequence, not that
TensorRT works. What it does give:

* **The real API surface of one release.** Every type, enum and module name is generated from
  ``tests/data/trt-api/api-<version>.json`` (11.1 or 10.16). Reading or setting a name the release does not
  have raises AttributeError, as the real module would (``trt.BuilderFlag.FP16`` on 11.1, for instance); a
  name the release has but this double does not implement raises NotImplementedError, so it is never silently
  accepted. Enum values are distinct per enum; ``NetworkDefinitionCreationFlag`` has the real values (10.x
  ``STRONGLY_TYPED = 1``, 11.x ``STRONGLY_TYPED = 0``), the other values are made up.
* **A record of every call** into ``FakeTensorRT.calls`` as ``(name, args, kwargs)``: ``"Builder"`` for a
  constructor, ``"IBuilderConfig.set_flag"`` for a method, ``"IBuilderConfig.DLA_core="`` for an attribute set,
  ``"init_libnvinfer_plugins"`` for a module function. Pass the same list to the CUDA double to see both in order.
* **Plausible behaviour.** The parser "parses" into the network described by ``FakeTensorRT.model`` or fails with
  ``parser_errors``; ``build_serialized_network`` checks profiles and flags like TensorRT does and returns
  ``b"FAKEPLAN:" + json`` (what was built: version, flags, IO and profile shapes), or None after logging an ERROR;
  ``deserialize_cuda_engine`` returns an engine for such a plan and None (after logging TensorRT's messages) for
  anything else: corrupt, truncated, another TensorRT version, a version-compatible plan without
  ``engine_host_code_allowed``. Execution contexts check shapes and addresses, and ``execute_async_v3``
  "computes" on the fake device of ``tests/doubles/fake_cuda.py``: row ``b`` of every output is filled with the
  mean of row ``b`` of the first input.
* **Two hooks for a double that really runs the model** (``tests/doubles/gpu_tensorrt.py``):
  ``model_from_onnx=True`` makes the parser read the real IO names, dtypes and shapes (and the layers' types)
  from the ONNX file it is given (:func:`model_from_onnx`), and the plan then names that file; an ``executor``
  (:class:`Executor`) is handed every ``execute_async_v3`` after the context's checks, instead of the fake
  device's arithmetic, and may prepare each engine at ``deserialize_cuda_engine``.
"""

from __future__ import annotations

import inspect
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .trt_api import ApiSurface, load_surface

__all__ = ["FakeTensorRT", "FakeModel", "FakeTensor", "Executor", "PLAN_MAGIC", "model_from_onnx"]

PLAN_MAGIC = b"FAKEPLAN:"

# Real DataType values (NvInferRuntimeBase.h).
_DATATYPE_VALUES = {
    "FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11
}  # fmt: skip
_ITEMSIZE = {
    "FLOAT": 4, "HALF": 2, "INT8": 1, "INT32": 4, "BOOL": 1, "UINT8": 1, "FP8": 1, "BF16": 2, "INT64": 8, "INT4": 0.5, "FP4": 0.5, "E8M0": 1
}  # fmt: skip
_NUMPY = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8
}  # fmt: skip
_ENUM_VALUES = {
    "10.16": {
        "NetworkDefinitionCreationFlag": {
            "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3
        }
    },
    "11.1": {"NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}},
}
_MODULE_DTYPE_ALIASES = {
    "float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int8": "INT8", "int32": "INT32", "int64": "INT64",
    "bool": "BOOL", "uint8": "UINT8", "fp8": "FP8", "int4": "INT4", "fp4": "FP4", "e8m0": "E8M0",
}  # fmt: skip
_PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")


@dataclass
class FakeTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "FLOAT"  # a DataType member name


@dataclass
class FakeModel:
    """What the fake ONNX parser finds in any model: its inputs, outputs and layers (type, output DataType)."""

    inputs: list[FakeTensor] = field(default_factory=lambda: [FakeTensor("images", (-1, 3, 416, 416))])
    outputs: list[FakeTensor] = field(default_factory=lambda: [FakeTensor("output", (-1, 2535, 85))])
    layers: list[tuple[str, str]] = field(default_factory=lambda: [("CONVOLUTION", "FLOAT"), ("ACTIVATION", "FLOAT")])


class Executor(Protocol):
    """What ``FakeTensorRT(executor=...)`` delegates execution to (the GPU double's is ``gpu_tensorrt._TorchExecutor``).

    ``execute`` is called by ``IExecutionContext.execute_async_v3(stream_handle)`` once the context's shapes and
    addresses are all set, with the context (for per-context state), the engine's plan (the dict the fake builder
    wrote: ``inputs``/``outputs`` with names, shapes, DataType names; ``flags``; ``onnx``), the input shapes given
    to ``set_input_shape``, every tensor's address from ``set_tensor_address`` and the stream handle. It enqueues
    the work and returns; an exception makes ``execute_async_v3`` log an ERROR through the engine's logger and
    return False, as TensorRT does. ``load(plan)``, if the executor has it, is called by
    ``deserialize_cuda_engine`` (an exception there: an ERROR and None, like an engine that does not load).
    """

    def execute(self, context: Any, plan: dict, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int], stream_handle: int) -> None: ...


# ONNX TensorProto.DataType -> TensorRT DataType member (types TensorRT has no DataType for are parse errors).
_ONNX_DATATYPES = {
    1: "FLOAT", 10: "HALF", 16: "BF16", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 17: "FP8", 22: "INT4", 23: "FP4"
}  # fmt: skip
# ONNX op -> TensorRT LayerType; approximate (the adapter looks only for Q/DQ layers and the layers' types).
_ONNX_LAYERS = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "MaxPool": "POOLING", "AveragePool": "POOLING",
    "GlobalAveragePool": "POOLING", "GlobalMaxPool": "POOLING", "Relu": "ACTIVATION", "LeakyRelu": "ACTIVATION",
    "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION", "Clip": "ACTIVATION", "HardSigmoid": "ACTIVATION",
    "Elu": "ACTIVATION", "Softplus": "ACTIVATION", "PRelu": "PARAMETRIC_RELU", "Concat": "CONCATENATION",
    "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE", "Squeeze": "SQUEEZE",
    "Unsqueeze": "UNSQUEEZE", "Resize": "RESIZE", "Upsample": "RESIZE", "Slice": "SLICE", "Gather": "GATHER",
    "Cast": "CAST", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY", "Softmax": "SOFTMAX", "Constant": "CONSTANT", "Shape": "SHAPE", "Pad": "PADDING",
    "TopK": "TOPK", "NonMaxSuppression": "NMS", "Where": "SELECT", "Identity": "IDENTITY",
    "BatchNormalization": "NORMALIZATION", "LayerNormalization": "NORMALIZATION",
    "InstanceNormalization": "NORMALIZATION", "ReduceMean": "REDUCE", "ReduceSum": "REDUCE", "ReduceMax": "REDUCE",
    "ReduceMin": "REDUCE", "Exp": "UNARY", "Log": "UNARY", "Sqrt": "UNARY", "Abs": "UNARY", "Neg": "UNARY",
    "Reciprocal": "UNARY", "Floor": "UNARY", "Ceil": "UNARY", "Erf": "UNARY", "Not": "UNARY",
}  # fmt: skip
_ONNX_INTEGER_OPS = {"Shape": 7, "NonZero": 7, "ArgMax": 7, "ArgMin": 7, "NonMaxSuppression": 7, "Size": 7}


def model_from_onnx(source: str | Path | bytes) -> FakeModel:
    """The :class:`FakeModel` of a real ONNX model (a path, or the model's bytes): its graph inputs (initializers
    left out), outputs, their DataTypes and shapes (``dim_value`` > 0, else -1), and one layer per node with the
    DataType of its first output (from the graph's type information, else carried forward from its inputs).
    ValueError for a type TensorRT has no DataType for; what ``onnx.load`` raises for a file that is no model."""
    import onnx

    if isinstance(source, (bytes, bytearray, memoryview)):
        proto = onnx.load_model_from_string(bytes(source))
    else:
        proto = onnx.load(str(source), load_external_data=False)
    graph = proto.graph
    initializers = {i.name: i.data_type for i in graph.initializer}

    def tensor(value: Any) -> FakeTensor:
        declared = value.type.tensor_type
        if declared.elem_type not in _ONNX_DATATYPES:
            type_name = onnx.TensorProto.DataType.Name(declared.elem_type) if declared.elem_type else "no type"
            raise ValueError(f"tensor {value.name!r} has ONNX type {type_name}, which TensorRT does not support")
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in declared.shape.dim)
        return FakeTensor(value.name, shape, _ONNX_DATATYPES[declared.elem_type])

    inputs = [tensor(v) for v in graph.input if v.name not in initializers]
    outputs = [tensor(v) for v in graph.output]
    types: dict[str, int] = dict(initializers)
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    layers = []
    for node in graph.node:  # ONNX nodes are in topological order
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "Cast" and "to" in attributes:
            elem = attributes["to"].i
        elif node.op_type == "Constant" and "value" in attributes:
            elem = attributes["value"].t.data_type
        elif node.op_type == "QuantizeLinear":
            elem = types.get(node.input[2], 3) if len(node.input) > 2 and node.input[2] else 3  # the zero point's type, else INT8
        elif node.op_type == "DequantizeLinear":
            elem = types.get(node.input[1], 1)  # the scale's type
        elif node.output and node.output[0] in types:
            elem = types[node.output[0]]
        elif node.op_type in _ONNX_INTEGER_OPS:
            elem = _ONNX_INTEGER_OPS[node.op_type]
        else:
            elem = next((types[name] for name in node.input if name in types), 1)
        for name in node.output:
            types.setdefault(name, elem)
        layers.append((_ONNX_LAYERS.get(node.op_type, "ELEMENTWISE"), _ONNX_DATATYPES.get(elem, "FLOAT")))
    return FakeModel(inputs=inputs, outputs=outputs, layers=layers)


# -- checked types ----------------------------------------------------------------------------------------


class _TrtMeta(type):
    """Class-level attribute access checked against the surface (``trt.BuilderFlag.FP16``, ``trt.ILogger.Severity``).
    Classes made from these by the code under test (a TrtLogger subclass) are not checked."""

    def __getattribute__(cls, name: str) -> Any:
        if name[:1] != "_":
            own = type.__getattribute__(cls, "__dict__")
            allowed = own.get("_trt_allowed")
            if allowed is not None and name not in allowed:
                raise AttributeError(f"tensorrt {own['_trt_version']}: type object {own['_trt_name']!r} has no attribute {name!r}")
        return type.__getattribute__(cls, name)


class _TrtObject(metaclass=_TrtMeta):
    """Instances: attribute reads and writes checked against the surface; method calls and writes recorded."""

    _fake: FakeTensorRT

    def __getattribute__(self, name: str) -> Any:
        if name[:1] == "_":
            return object.__getattribute__(self, name)
        cls = type(self)
        own = cls.__dict__
        allowed = own.get("_trt_allowed")
        if allowed is None:  # a subclass written by the code under test
            return object.__getattribute__(self, name)
        if name not in allowed:
            raise AttributeError(f"tensorrt {own['_trt_version']}: {own['_trt_name']!r} object has no attribute {name!r}")
        try:
            value = object.__getattribute__(self, name)
        except AttributeError:
            raise NotImplementedError(f"fake_tensorrt: {own['_trt_name']}.{name} is not implemented by the double") from None
        if inspect.ismethod(value):
            return _recording(self._fake, f"{own['_trt_name']}.{name}", value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        own = type(self).__dict__
        allowed = own.get("_trt_allowed")
        if name[:1] != "_" and allowed is not None:
            if name not in allowed:
                raise AttributeError(f"tensorrt {own['_trt_version']}: {own['_trt_name']!r} object has no attribute {name!r}")
            self._fake.calls.append((f"{own['_trt_name']}.{name}=", (value,), {}))
        object.__setattr__(self, name, value)

    @classmethod
    def _create(cls, fake: FakeTensorRT, **state: Any) -> Any:
        """Internal construction (by another fake object): not recorded, no public __init__."""
        obj = cls.__new__(cls)
        for key, value in state.items():
            object.__setattr__(obj, key, value)
        return obj


def _recording(fake: FakeTensorRT, name: str, function: Any) -> Any:
    """Record a call from the code under test; calls the fake makes to itself while serving it are not recorded."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if fake._depth == 0:
            fake.calls.append((name, args, kwargs))
        fake._depth += 1
        try:
            return function(*args, **kwargs)
        finally:
            fake._depth -= 1

    return call


class _EnumValue(int):
    """A pybind11 enum value: int() works, equal only to the same member of the same enum, hashable."""

    def __new__(cls, enum: str, name: str, value: int):
        obj = int.__new__(cls, value)
        obj._enum = enum
        obj._name = name
        return obj

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return int(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EnumValue) and other._enum == self._enum and int(other) == int(self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self._enum, int(self)))

    def __repr__(self) -> str:
        return f"<{self._enum}.{self._name}: {int(self)}>"

    def __str__(self) -> str:
        return f"{self._enum}.{self._name}"


class _DataTypeValue(_EnumValue):
    @property
    def itemsize(self) -> float:
        return _ITEMSIZE[self._name]


class _Placeholder(_TrtObject):
    """A type the release has and this double does not implement."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(f"fake_tensorrt: {type(self).__dict__['_trt_name']} is not implemented by the double")


# -- behaviour --------------------------------------------------------------------------------------------


class _ILogger(_TrtObject):
    def __init__(self) -> None:
        pass


class _HostMemory(_TrtObject, bytes):
    """IHostMemory: supports the buffer protocol (memoryview), like the real one; no bytes methods are reachable."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> Any:
        return self._fake.enum("DataType", "UINT8")


class _Tensor(_TrtObject):
    name: str
    shape: tuple[int, ...]
    dtype: Any


class _Layer(_TrtObject):
    type: Any
    _output: Any

    @property
    def num_outputs(self) -> int:
        return 1

    def get_output(self, index: int) -> Any:
        if index != 0:
            raise IndexError(index)
        return self._output


class _Network(_TrtObject):
    _flags: int
    _inputs: list
    _outputs: list
    _layers: list
    _source: str | None  # the ONNX file parsed into it (model_from_onnx), named in the plan

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> Any:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Any:
        return self._outputs[index]

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index: int) -> Any:
        return self._layers[index]

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag)))

    def _strongly_typed(self) -> bool:
        fake = self._fake
        strongly_typed = fake.enum("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
        return fake.surface.major >= 11 or bool(self._flags & (1 << int(strongly_typed)))

    def _populate(self, model: FakeModel) -> None:
        fake = self._fake
        def tensor(name: str, shape: tuple, dtype: str) -> Any:
            return fake.new("ITensor", name=name, shape=tuple(shape), dtype=fake.enum("DataType", dtype))

        self._inputs = [tensor(t.name, t.shape, t.dtype) for t in model.inputs]
        self._outputs = [tensor(t.name, t.shape, t.dtype) for t in model.outputs]
        self._layers = [
            fake.new("ILayer", type=fake.enum("LayerType", kind), _output=tensor(f"layer{i}", (), dtype))
            for i, (kind, dtype) in enumerate(model.layers)
        ]


class _ParserError(_TrtObject):
    _index: int
    _desc: str

    def code(self) -> Any:
        return self._fake.enum("ErrorCode", "UNSUPPORTED_NODE")

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._index

    def node_name(self) -> str:
        return f"node_{self._index}"

    def node_operator(self) -> str:
        return "FakeOp"

    def __str__(self) -> str:
        return f"In node {self._index} with name: node_{self._index} and operator: FakeOp: {self._desc}"


class _OnnxParser(_TrtObject):
    def __init__(self, network: Any, logger: Any):
        self._fake.calls.append(("OnnxParser", (network, logger), {}))
        self._network = network
        self._logger = logger
        self._errors: list = []

    def parse(self, model: Any, path: str | None = None) -> bool:
        data = bytes(model)  # must be a buffer, like the real binding's argument
        return self._parse(data, path)

    def parse_from_file(self, model: str) -> bool:
        return self._parse(None, model)

    def _parse(self, data: bytes | None, path: str | None) -> bool:
        fake = self._fake
        errors = list(fake.parser_errors)
        model = fake.model
        if fake.model_from_onnx and not errors:
            try:
                model = model_from_onnx(path if path is not None else data)
            except Exception as exc:  # not a model, unreadable, a type TensorRT lacks
                errors = [f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"]
        self._errors = [fake.new("ParserError", _index=i, _desc=desc) for i, desc in enumerate(errors)]
        for error in self._errors:
            fake.log(self._logger, "ERROR", f"ModelImporter: {error}")
        if self._errors:
            return False
        if fake.model_from_onnx:
            fake.model = model
            object.__setattr__(self._network, "_source", str(Path(path).resolve()) if path is not None else None)
        self._network._populate(model)
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []


class _Profile(_TrtObject):
    _shapes: dict

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the binding's names
        shapes = [tuple(int(d) for d in s) for s in (min, opt, max)]
        if len({len(s) for s in shapes}) != 1 or any(d < 1 for s in shapes for d in s):
            raise RuntimeError(f"invalid profile shapes for {input!r}: {shapes}")
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise RuntimeError(f"profile shapes for {input!r} must satisfy min <= opt <= max: {shapes}")
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list:  # noqa: A002
        return [list(s) for s in self._shapes[input]]


class _TimingCache(_TrtObject):
    _data: bytes

    def serialize(self) -> Any:
        return self._fake.new("IHostMemory", _bytes=self._data)

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        self._data += input_cache._data
        return True


class _BuilderConfig(_TrtObject):
    _logger: Any
    _pools: dict
    _flags: set
    _profiles: list
    _timing_cache: Any

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool, 0)

    def set_flag(self, flag: Any) -> None:
        self._check_enum(flag, "BuilderFlag")
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: Any) -> int:
        if not profile._shapes:
            self._fake.log(self._logger, "ERROR", "IBuilderConfig::addOptimizationProfile: profile is not valid")
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        return self._fake.new("ITimingCache", _data=bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if cache._data.startswith(b"OTHERGPU") and not ignore_mismatch:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._timing_cache

    def _check_enum(self, value: Any, enum: str) -> None:
        if not (isinstance(value, _EnumValue) and value._enum == enum):
            raise TypeError(f"expected a tensorrt.{enum}, got {value!r}")


class _Builder(_TrtObject):
    def __init__(self, logger: Any):
        self._fake.calls.append(("Builder", (logger,), {}))
        self._logger = logger

    def create_network(self, flags: int = 0) -> Any:
        return self._fake.new("INetworkDefinition", _flags=int(flags), _inputs=[], _outputs=[], _layers=[], _source=None)

    def create_builder_config(self) -> Any:
        fake = self._fake
        return fake.new(
            "IBuilderConfig",
            _logger=self._logger,
            _pools={},
            _flags=set(),
            _profiles=[],
            _timing_cache=None,
            builder_optimization_level=3,
            hardware_compatibility_level=fake.enum("HardwareCompatibilityLevel", "NONE"),
            default_device_type=fake.enum("DeviceType", "GPU"),
            DLA_core=-1,
        )

    def create_optimization_profile(self) -> Any:
        return self._fake.new("IOptimizationProfile", _shapes={})

    @property
    def num_DLA_cores(self) -> int:
        return self._fake.dla_cores

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        fake = self._fake
        error = self._build_error(network, config)
        if error:
            fake.log(self._logger, "ERROR", error)
            return None
        profile = {name: shapes for p in config._profiles for name, shapes in p._shapes.items()}
        flags = sorted(f.name for f in config._flags)
        plan = {
            "tensorrt": fake.surface.full_version,
            "strongly_typed": network._strongly_typed(),
            "flags": flags,
            "version_compatible": "VERSION_COMPATIBLE" in flags,
            "hardware_compatibility_level": config.hardware_compatibility_level.name,
            "device": config.default_device_type.name,
            "DLA_core": config.DLA_core,
            "workspace": config._pools.get(fake.enum("MemoryPoolType", "WORKSPACE")),
            "optimization_level": config.builder_optimization_level,
            "inputs": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name, "profile": [list(s) for s in profile.get(t.name, [])] or None}
                for t in network._inputs
            ],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._outputs],
        }
        if network._source is not None:  # parsed with model_from_onnx: what an executor runs
            plan["onnx"] = network._source
        if config._timing_cache is not None:
            config._timing_cache._data += f"entry:{fake.model.inputs[0].name};".encode()
        fake.plans.append(plan)
        return fake.new("IHostMemory", _bytes=PLAN_MAGIC + json.dumps(plan, sort_keys=True).encode())

    def _build_error(self, network: Any, config: Any) -> str | None:
        fake = self._fake
        if fake.build_error:
            return fake.build_error
        if not network._inputs:
            return "Network must have at least one input (was the model parsed?)"
        if network._strongly_typed():
            bad = [f.name for f in config._flags if f.name in _PRECISION_FLAGS]
            if bad:
                return f"BuilderFlag {bad} cannot be used with a strongly typed network"
        shapes = {name: s for p in config._profiles for name, s in p._shapes.items()}
        for tensor in network._inputs:
            if -1 not in tensor.shape:
                continue
            if tensor.name not in shapes:
                return f"Network has dynamic or shape inputs, but no optimization profile has been defined ({tensor.name!r})."
            for s in shapes[tensor.name]:
                if len(s) != len(tensor.shape) or any(d != -1 and d != v for d, v in zip(tensor.shape, s)):
                    return f"profile shape {s} does not match input {tensor.name!r} {tensor.shape}"
        return None


class _Runtime(_TrtObject):
    def __init__(self, logger: Any):
        self._fake.calls.append(("Runtime", (logger,), {}))
        self._logger = logger
        object.__setattr__(self, "engine_host_code_allowed", False)
        object.__setattr__(self, "DLA_core", -1)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        fake = self._fake
        data = bytes(serialized_engine)
        error, plan = self._check(data)
        if error:
            fake.log(self._logger, "ERROR", error)
            fake.log(self._logger, "ERROR", "IRuntime::deserializeCudaEngine: Serialization (Engine deserialization failed.)")
            return None
        load = getattr(fake.executor, "load", None)
        if load is not None:
            try:
                load(plan)
            except Exception as exc:
                fake.log(self._logger, "ERROR", f"IRuntime::deserializeCudaEngine: {type(exc).__name__}: {exc}")
                return None
        return fake.new("ICudaEngine", _plan=plan, _contexts=[], _logger=self._logger)

    def _check(self, data: bytes) -> tuple[str | None, dict | None]:
        current = self._fake.surface.full_version
        if not data.startswith(PLAN_MAGIC):
            return "Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match", None
        try:
            plan = json.loads(data[len(PLAN_MAGIC):])
        except ValueError:
            return "Serialization assertion: the engine plan is truncated or corrupted", None
        built = plan["tensorrt"]
        if plan["version_compatible"] and not self.engine_host_code_allowed:
            return "Cannot deserialize a version-compatible engine: engine host code is not allowed", None
        if built != current:
            older = tuple(map(int, built.split("."))) < tuple(map(int, current.split(".")))
            forward = plan["version_compatible"] and older and int(current.split(".")[0]) - int(built.split(".")[0]) in (0, 1)
            if not forward:
                return (
                    "Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed.Version tag does not match. "
                    f"Note: Current Version: {current}, Serialized Engine Version: {built}"
                ), None
        return None, plan


class _Engine(_TrtObject):
    _plan: dict
    _contexts: list
    _logger: Any

    def _tensors(self) -> list[dict]:
        return [dict(t, input=True) for t in self._plan["inputs"]] + [dict(t, input=False) for t in self._plan["outputs"]]

    def _tensor(self, name: str) -> dict | None:
        return next((t for t in self._tensors() if t["name"] == name), None)

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors())

    def get_tensor_name(self, index: int) -> str:
        return self._tensors()[index]["name"]

    def get_tensor_mode(self, name: str) -> Any:
        tensor = self._tensor(name)
        member = "NONE" if tensor is None else "INPUT" if tensor["input"] else "OUTPUT"
        return self._fake.enum("TensorIOMode", member)

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        return self._fake.enum("DataType", self._tensor(name)["dtype"])

    def get_tensor_location(self, name: str) -> Any:
        return self._fake.enum("TensorLocation", "DEVICE")

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        tensor = self._tensor(name)
        if profile_index != 0 or tensor is None or not tensor["input"] or not tensor.get("profile"):
            raise RuntimeError(f"no profile shape for {name!r} in profile {profile_index}")
        return [tuple(s) for s in tensor["profile"]]

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def create_execution_context(self, strategy: Any = None) -> Any:
        context = self._fake.new("IExecutionContext", _engine=self, _shapes={}, _addresses={})
        self._contexts.append(context)
        self._fake.contexts.append(context)
        return context


class _Context(_TrtObject):
    _engine: Any
    _shapes: dict
    _addresses: dict

    def set_input_shape(self, name: str, shape: Any) -> bool:
        tensor = self._engine._tensor(name)
        shape = tuple(int(d) for d in shape)
        if tensor is None or not tensor["input"] or len(shape) != len(tensor["shape"]):
            return False
        profile = tensor.get("profile")
        for axis, (declared, value) in enumerate(zip(tensor["shape"], shape)):
            if declared != -1 and declared != value:
                return False
            if declared == -1 and profile and not profile[0][axis] <= value <= profile[2][axis]:
                message = f"IExecutionContext::setInputShape: {name} dimension {axis} = {value} is outside the profile"
                self._fake.log(self._engine._logger, "ERROR", message)
                return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        tensor = self._engine._tensor(name)
        if tensor["input"]:
            return self._shapes.get(name, tuple(tensor["shape"]))
        batch = self._batch()
        shape = list(tensor["shape"])
        if shape and shape[0] == -1 and batch is not None:
            shape[0] = batch
        return tuple(shape)

    def _batch(self) -> int | None:
        first = self._engine._plan["inputs"][0]
        return self._shapes.get(first["name"], (None,))[0] if -1 in first["shape"] else first["shape"][0]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self._engine._tensor(name) is None:
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def infer_shapes(self) -> list:
        return [t["name"] for t in self._engine._plan["inputs"] if -1 in t["shape"] and t["name"] not in self._shapes]

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake = self._fake
        missing = self.infer_shapes() + [t["name"] for t in self._engine._tensors() if t["name"] not in self._addresses]
        if missing:
            fake.log(self._engine._logger, "ERROR", f"IExecutionContext::enqueueV3: shapes or addresses not set for {missing}")
            return False
        if fake.executor is not None:
            try:
                fake.executor.execute(self, self._engine._plan, dict(self._shapes), dict(self._addresses), int(stream_handle))
            except Exception as exc:  # TensorRT reports a failed enqueue through the logger and returns False
                fake.log(self._engine._logger, "ERROR", f"IExecutionContext::enqueueV3: {type(exc).__name__}: {exc}")
                return False
            return True
        if fake.device is not None:
            self._compute()
        return True

    def _compute(self) -> None:
        device = self._fake.device
        batch = self._batch()
        first = self._engine._plan["inputs"][0]
        in_shape = self.get_tensor_shape(first["name"])
        data = _read(device, self._addresses[first["name"]], first["dtype"], in_shape)
        means = data.reshape(batch, -1).astype(np.float64).mean(axis=1)
        for tensor in self._engine._plan["outputs"]:
            shape = self.get_tensor_shape(tensor["name"])
            out = _read(device, self._addresses[tensor["name"]], tensor["dtype"], shape)
            out[...] = means.reshape((batch,) + (1,) * (len(shape) - 1)).astype(out.dtype)


def _read(device: Any, address: int, dtype: str, shape: tuple) -> np.ndarray:
    np_dtype = np.dtype(_NUMPY[dtype])
    return device.view(address, math.prod(shape) * np_dtype.itemsize).view(np_dtype).reshape(shape)


_IMPLEMENTED: dict[str, type] = {
    "ILogger": _ILogger,
    "IHostMemory": _HostMemory,
    "ITensor": _Tensor,
    "ILayer": _Layer,
    "INetworkDefinition": _Network,
    "ParserError": _ParserError,
    "OnnxParser": _OnnxParser,
    "IOptimizationProfile": _Profile,
    "ITimingCache": _TimingCache,
    "IBuilderConfig": _BuilderConfig,
    "Builder": _Builder,
    "Runtime": _Runtime,
    "ICudaEngine": _Engine,
    "IExecutionContext": _Context,
}


# -- the module -------------------------------------------------------------------------------------------


class _FakeModule:
    """The object passed as ``trt``: only names of the chosen release resolve."""

    def __init__(self, fake: FakeTensorRT, names: dict[str, Any]):
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_names", names)

    def __getattr__(self, name: str) -> Any:
        fake = object.__getattribute__(self, "_fake")
        names = object.__getattribute__(self, "_names")
        if name in names:
            return names[name]
        if name in fake.surface.module_names:
            raise NotImplementedError(f"fake_tensorrt: tensorrt.{name} is not implemented by the double")
        raise AttributeError(f"module 'tensorrt' ({fake.surface.full_version}) has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the fake tensorrt module is read-only")

    def __repr__(self) -> str:
        return f"<fake tensorrt {object.__getattribute__(self, '_fake').surface.full_version} (test double)>"


class FakeTensorRT:
    """The controller of one fake ``tensorrt`` module: knobs for tests and what the module recorded.

    ``module`` is what the code under test gets as ``trt``. Knobs: ``model`` (what parsing finds),
    ``model_from_onnx`` (parsing reads it from the ONNX file instead, and the plan names the file),
    ``executor`` (runs ``execute_async_v3`` instead of the fake device, see :class:`Executor`),
    ``parser_errors`` (parse fails with these), ``build_error`` (build logs it and returns None),
    ``dla_cores``. Records: ``calls``, ``plans`` (what each build put in its plan), ``contexts``, ``log_lines``.
    """

    def __init__(
        self,
        version: str = "11.1",
        *,
        calls: list | None = None,
        device: Any = None,
        model: FakeModel | None = None,
        executor: Executor | None = None,
        model_from_onnx: bool = False,
    ):
        self.surface: ApiSurface = load_surface(version)
        self.version = version
        self.calls: list[tuple[str, tuple, dict]] = calls if calls is not None else []
        self.device = device
        self.model = model or FakeModel()
        self.executor = executor
        self.model_from_onnx = model_from_onnx
        self.parser_errors: list[str] = []
        self.build_error: str | None = None
        self.dla_cores = 0
        self.plans: list[dict] = []
        self.contexts: list[Any] = []
        self.log_lines: list[tuple[str, str]] = []
        self.types: dict[str, Any] = {}
        self._local = threading.local()  # the recording depth, per thread (a daemon drives contexts from several)
        self._make_types()
        self.module = _FakeModule(self, self._module_names())

    @property
    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @_depth.setter
    def _depth(self, value: int) -> None:
        self._local.depth = value

    # helpers for the fake objects
    def enum(self, enum: str, member: str) -> _EnumValue:
        return type.__getattribute__(self.types[enum], member)

    def new(self, type_name: str, **state: Any) -> Any:
        cls = self.types[type_name]
        if type_name == "IHostMemory":
            obj = bytes.__new__(cls, state.pop("_bytes"))
            for key, value in state.items():
                object.__setattr__(obj, key, value)
            return obj
        return cls._create(self, **state)

    def log(self, logger: Any, severity: str, message: str) -> None:
        self.log_lines.append((severity, message))
        if logger is not None:
            logger.log(self.enum("ILogger.Severity", severity), message)

    def names(self) -> list[str]:
        """The recorded call names, in order."""
        return [name for name, _, _ in self.calls]

    def find(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for n, args, kwargs in self.calls if n == name]

    # building the module
    def _make_types(self) -> None:
        surface = self.surface
        for name in sorted(surface.types(), key=lambda n: n.count(".")):
            members = surface.members(name)
            base_attrs = {
                "_trt_allowed": members, "_trt_name": name, "_trt_version": surface.full_version, "_fake": self, "__module__": "tensorrt"
            }  # fmt: skip
            if surface.is_enum(name):
                self.types[name] = self._make_enum(name, members, base_attrs)
            else:
                impl = _IMPLEMENTED.get(name, _Placeholder)
                self.types[name] = _TrtMeta(name.rsplit(".", 1)[-1], (impl,), dict(base_attrs))
        for name, cls in self.types.items():  # nested types become attributes of their outer type
            if "." in name:
                outer, inner = name.rsplit(".", 1)
                type.__setattr__(self.types[outer], inner, cls)
        severity = self.types["ILogger.Severity"]
        for logger in ("ILogger", "Logger"):
            for member in surface.members("ILogger.Severity"):
                type.__setattr__(self.types[logger], member, type.__getattribute__(severity, member))
            type.__setattr__(self.types[logger], "Severity", severity)

    def _make_enum(self, name: str, members: frozenset[str], attrs: dict) -> type:
        values = sorted(m for m in members if m.isupper())  # not itemsize, __str__, ...
        known = _DATATYPE_VALUES if name == "DataType" else _ENUM_VALUES.get(self.version, {}).get(name, {})
        value_class = _DataTypeValue if name == "DataType" else _EnumValue
        taken = set(known.values())
        counter = iter(v for v in range(1000) if v not in taken)
        for member in values:
            attrs[member] = value_class(name, member, known[member] if member in known else next(counter))
        return _TrtMeta(name.rsplit(".", 1)[-1], (), attrs)

    def _module_names(self) -> dict[str, Any]:
        names: dict[str, Any] = {}
        for name in self.surface.module_names:
            if name in self.types:
                names[name] = self.types[name]
        for alias, member in _MODULE_DTYPE_ALIASES.items():
            if alias in self.surface.module_names:
                names[alias] = self.enum("DataType", member)
        names["__version__"] = self.surface.full_version
        names["nptype"] = self._function("nptype", _nptype)
        names["volume"] = self._function("volume", lambda shape: math.prod(shape))
        names["init_libnvinfer_plugins"] = self._function("init_libnvinfer_plugins", lambda logger, namespace: True)
        return names

    def _function(self, name: str, function: Any) -> Any:
        assert name in self.surface.module_names, name
        return _recording(self, name, function)


def _nptype(trt_type: Any) -> type:
    if not isinstance(trt_type, _EnumValue) or trt_type._enum != "DataType":
        raise TypeError(f"nptype() expects a tensorrt.DataType, got {trt_type!r}")
    if trt_type.name not in _NUMPY:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {trt_type}")
    return _NUMPY[trt_type.name]
