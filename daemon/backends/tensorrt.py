"""TensorRT: build a plan from the ONNX model (:class:`TensorRTBuilder`) and run it (:class:`TensorRTExecutor`).

A thin adapter over the TensorRT 10.x / 11.x Python API (``/work/shared/trt/NOTES.md`` has the API notes).

Why this shape:

* The serving hot path is the GPU runtime's (:class:`daemon.gpu.runtime.DeviceRuntime`), shared with the
  torch backend: per slot, pinned host buffers, device buffers, the GPU preprocessing staging area, the
  device decoding and the event. :meth:`TensorRTBuilder.load` returns that runtime around a
  :class:`TensorRTExecutor`, which owns only what is TensorRT's: the engine and **one execution context per
  stream** (a context must not run on two streams at once), like ``ModelInstanceState`` in Triton's
  tensorrt_backend. Per batch the executor sets the input shapes and every tensor's address (the slot's
  device buffers) and calls ``execute_async_v3`` on the slot's stream, or the runtime replays the CUDA graph
  captured from exactly that (trtexec's pattern: one warm enqueue, then stream capture).
* CUDA goes through :mod:`daemon.cuda` (NVIDIA's ``samples/python/common_runtime.py`` pattern: one small class
  per resource, every call checked in one place).
* ``tensorrt`` and cuda-python are imported lazily, so this module imports on machines without them. Every class
  takes the ``trt`` module and the ``cuda`` layer (default: ``tensorrt`` and :mod:`daemon.cuda`), so tests can
  stand a double in (``tests/doubles``): on a CPU machine that proves the call sequence, not that TensorRT works.

Conventions that ``tests/test_tensorrt_api_surface.py`` relies on (it parses this file):

* TensorRT names are spelled ``trt.X.Y`` with ``trt`` the module (``trt = self._trt`` at the top of a method).
* Code that differs between TensorRT 10 and 11 sits under ``if self._v11:`` (11 only) and its ``else:`` (10 only);
  ``not``, ``and`` and ``or`` around ``self._v11`` are understood. Everything else must work on both versions.
* Variables holding TensorRT objects are annotated with their TensorRT type (``network: trt.INetworkDefinition``)
  or assigned straight from a TensorRT call, so the methods called on them are checked too.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import EngineConfig, ModelConfig
from ..engine.artifact import ArtifactInvalid, Progress
from ..engine.fingerprint import file_sha256
from ..fsutil import write_atomically
from ..errors import BackendError
from ..gpu.runtime import DeviceRuntime, ExecutorInfo, frame_transfer_for
from .base import TensorSpec

if TYPE_CHECKING:  # only for annotations; never imported at run time here
    import tensorrt as trt

__all__ = [
    "TensorRTExecutor",
    "TensorRTBuilder",
    "TrtLogger",
    "import_tensorrt",
    "tensorrt_available",
    "trt_major",
]

log = logging.getLogger("trtstream.backends.tensorrt")

_VERBOSE = 5  # below DEBUG: TensorRT's VERBOSE is very chatty


def import_tensorrt() -> Any:
    """The real ``tensorrt`` module, or a BackendError saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "engine.backend = 'tensorrt' needs NVIDIA's TensorRT Python package (pip install tensorrt-cu13, or "
            "tensorrt-cu12 for CUDA 12; JetPack ships it), or use engine.backend = 'onnxruntime'"
        ) from None
    return tensorrt


def tensorrt_available() -> bool:
    """Whether TensorRT is installed and a CUDA GPU answers (cheap; does not import TensorRT)."""
    from .. import cuda

    return importlib.util.find_spec("tensorrt") is not None and cuda.cuda_available()


def _default_cuda() -> Any:
    from .. import cuda

    return cuda


def trt_major(trt: Any) -> int:
    """TensorRT's major version from ``trt.__version__`` ("11.1.0.106" -> 11)."""
    return int(str(trt.__version__).split(".")[0])


class TrtLogger:
    """TensorRT's log into Python logging, remembering the last error lines for error messages.

    TensorRT reports why a build or a deserialization failed only through its logger, so failures quote
    :meth:`describe_errors`. Create with :meth:`create`: the object must also be a ``trt.ILogger`` of the module
    in use (injected, so not known when this class is defined), so each logger gets a subclass of both.
    """

    @classmethod
    def create(cls, trt: Any, name: str = "trtstream.tensorrt") -> TrtLogger:
        return type("TrtLogger", (cls, trt.ILogger), {})(trt, name)

    def __init__(self, trt: Any, name: str = "trtstream.tensorrt"):
        trt.ILogger.__init__(self)
        self._levels = {
            trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
            trt.ILogger.Severity.ERROR: logging.ERROR,
            trt.ILogger.Severity.WARNING: logging.WARNING,
            trt.ILogger.Severity.INFO: logging.DEBUG,
            trt.ILogger.Severity.VERBOSE: _VERBOSE,
        }
        self._error_severities = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
        self._errors: deque[str] = deque(maxlen=20)
        self._logger = logging.getLogger(name)

    def log(self, severity: Any, msg: str) -> None:  # called by TensorRT, from its own threads too
        if severity in self._error_severities:
            self._errors.append(str(msg).strip())
        self._logger.log(self._levels.get(severity, logging.WARNING), "TensorRT: %s", msg)

    def last_errors(self) -> list[str]:
        return list(self._errors)

    def describe_errors(self, limit: int = 5) -> str:
        errors = self.last_errors()[-limit:]
        return "; ".join(errors) if errors else "TensorRT logged no error"


def _write_fully(path: Path, data: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# Plugin libraries stay loaded for the life of the process: TensorRT keeps pointers into them.
_plugin_libraries: dict[str, ctypes.CDLL] = {}
_plugin_lock = threading.Lock()


def _load_plugins(trt: Any, plugins: list[Path], logger: TrtLogger) -> None:
    with _plugin_lock:
        for path in plugins:
            if str(path) not in _plugin_libraries:
                try:
                    _plugin_libraries[str(path)] = ctypes.CDLL(str(path))
                except OSError as exc:
                    raise BackendError(f"engine.tensorrt.plugins: cannot load {path}: {exc}") from None
        if not trt.init_libnvinfer_plugins(logger, ""):
            log.warning("TensorRT's built-in plugins could not be registered: %s", logger.describe_errors())


class TensorRTBuilder:
    """Builds and loads TensorRT plans for the engine cache (:class:`daemon.engine.artifact.ArtifactBuilder`)."""

    backend = "tensorrt"
    artifact_suffix = ".engine"
    uses_timing_cache = True

    def __init__(self, model: ModelConfig, engine: EngineConfig, trt: Any = None, cuda: Any = None):
        self._model = model
        self._engine = engine
        self._options = engine.tensorrt
        self._doubles = trt is not None or cuda is not None  # injected: they exist in this process only
        self._trt = trt if trt is not None else import_tensorrt()
        self._cuda = cuda if cuda is not None else _default_cuda()
        self._major = trt_major(self._trt)
        self._v11 = self._major >= 11
        self._min_batch, self._opt_batch, self._max_batch = self._batch_range()
        if self._options.dla_core is not None and self._v11:
            raise BackendError(
                f"engine.tensorrt.dla_core: DLA needs TensorRT 10 (this is TensorRT {self._trt.__version__}, which "
                "has no DLA support); remove dla_core to run on the GPU"
            )

    def _batch_range(self) -> tuple[int, int, int]:
        options, max_batch = self._options, self._engine.max_batch
        opt = options.opt_batch if options.opt_batch is not None else max_batch
        if not options.min_batch <= opt <= max_batch:
            raise BackendError(
                f"engine.tensorrt: need min_batch <= opt_batch <= engine.max_batch, got {options.min_batch}, {opt}, {max_batch}"
            )
        return options.min_batch, opt, max_batch

    def child_recipe(self) -> tuple[Any, tuple] | None:
        """A child process makes the same builder from the configuration (none on injected doubles)."""
        if self._doubles:
            return None
        from ..engine.builders import create_builder

        return create_builder, (self._model, self._engine, self.backend)

    # -- fingerprint ---------------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        trt = self._trt
        gpu = self._cuda.device_properties(self._engine.device)
        versions = self._cuda.cuda_versions()
        options = self._options.model_dump(mode="json")  # every TensorRTConfig option, new ones included
        options.update(
            min_batch=self._min_batch,
            opt_batch=self._opt_batch,
            max_batch=self._max_batch,
            plugins=[self._plugin_fingerprint(Path(p)) for p in self._options.plugins],
        )
        return {
            "backend": self.backend,
            "tensorrt": str(trt.__version__),
            "tensorrt_major": self._major,
            "gpu": gpu["name"],
            "compute_capability": gpu["compute_capability"],
            # What a plan and a timing cache are specific to (the cache keys timing caches on it). The model of
            # GPU, not its UUID: a plan built on one H100 (in an image build, say) serves every H100.
            "device": {"gpu": gpu["name"], "compute_capability": gpu["compute_capability"]},
            "cuda_runtime": versions["runtime"],
            "cuda_driver": versions["driver"],
            "input_size": list(self._model.input_size) if self._model.input_size else None,
            "options": options,
        }

    @staticmethod
    def _plugin_fingerprint(path: Path) -> dict[str, str]:
        try:
            return {"path": str(path), "sha256": file_sha256(path)}
        except OSError as exc:
            raise BackendError(f"engine.tensorrt.plugins: cannot read {path}: {exc.strerror}") from None

    # -- build ---------------------------------------------------------------------------------------------

    def build(self, model_path: Path, output_path: Path, timing_cache_path: Path | None, progress: Progress) -> None:
        trt = self._trt
        options = self._options
        logger = TrtLogger.create(trt)
        progress(0.0, "loading TensorRT plugins")
        _load_plugins(trt, options.plugins, logger)

        builder = trt.Builder(logger)
        flags = 0
        if options.strongly_typed or self._v11:  # always on in 11; the flag is deprecated there but still accepted
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)  # keep it until the build is done: the network uses weights it owns
        progress(0.05, f"parsing {model_path.name}")
        try:
            data = model_path.read_bytes()
        except OSError as exc:
            raise BackendError(f"{model_path}: cannot read the model: {exc.strerror}") from None
        if not parser.parse(data, path=str(model_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or [logger.describe_errors()]
            raise BackendError(
                f"{model_path}: TensorRT {trt.__version__} cannot parse the model ({len(errors)} error(s)):\n"
                + "\n".join(f"  {error}" for error in errors)
            )

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        config.builder_optimization_level = options.builder_optimization_level
        config.hardware_compatibility_level = {
            "none": trt.HardwareCompatibilityLevel.NONE,
            "ampere_plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
            "same_compute_capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
        }[options.hardware_compatibility]
        if options.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        self._configure_precision(network, config)
        if not self._v11 and options.dla_core is not None:
            if options.dla_core >= builder.num_DLA_cores:
                raise BackendError(
                    f"engine.tensorrt.dla_core = {options.dla_core}, but this device has {builder.num_DLA_cores} DLA core(s)"
                )
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = options.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        self._add_profile(builder, network, config, logger)
        if timing_cache_path is not None:
            self._load_timing_cache(config, timing_cache_path)

        progress(0.1, "building the TensorRT engine (this can take minutes)")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"{model_path}: TensorRT could not build an engine: {logger.describe_errors()}")
        progress(0.95, "writing the engine")
        if timing_cache_path is not None:
            self._save_timing_cache(config, timing_cache_path)
        _write_fully(output_path, memoryview(plan))
        progress(1.0, "engine built")

    def _configure_precision(self, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
        trt = self._trt
        precision = self._options.precision
        if self._v11:
            self._check_typed_precision(network)  # strongly typed: the ONNX's own types decide
        elif self._options.strongly_typed:
            self._check_typed_precision(network)
        elif precision != "fp32":
            # TensorRT 10 weak typing: the flag lets TensorRT pick lower-precision kernels. INT8/FP8 need a
            # Q/DQ model (calibrators are deprecated and not supported here).
            flag = {"fp16": trt.BuilderFlag.FP16, "int8": trt.BuilderFlag.INT8, "fp8": trt.BuilderFlag.FP8}[precision]
            config.set_flag(flag)
            if precision in ("int8", "fp8") and not self._network_types(network)[1]:
                log.warning(
                    "engine.tensorrt.precision = %r needs a quantized ONNX (Q/DQ nodes, e.g. from NVIDIA ModelOpt); "
                    "this model has none, so TensorRT will fall back to higher precision",
                    precision,
                )

    def _check_typed_precision(self, network: trt.INetworkDefinition) -> None:
        """Strongly typed builds take precision from the ONNX: warn (don't fail) if it cannot give what was asked."""
        trt = self._trt
        precision = self._options.precision
        dtypes, quantized = self._network_types(network)
        if precision == "fp16" and not dtypes & {trt.DataType.HALF, trt.DataType.BF16}:
            log.warning(
                "engine.tensorrt.precision = 'fp16', but %s is an FP32 model and this TensorRT build is strongly typed "
                "(precision comes from the ONNX), so the engine will run in FP32. Convert it first: "
                "trtstream convert --fp16 %s",
                self._model.path.name,
                self._model.path,
            )
        elif precision in ("int8", "fp8") and not quantized:
            log.warning(
                "engine.tensorrt.precision = %r, but %s has no Q/DQ nodes and this TensorRT build is strongly typed: "
                "the engine will run in the model's own precision. Quantize it first (NVIDIA ModelOpt)",
                precision,
                self._model.path.name,
            )

    def _network_types(self, network: trt.INetworkDefinition) -> tuple[set[Any], bool]:
        """The data types of the network's tensors, and whether it has quantize/dequantize layers."""
        trt = self._trt
        dtypes: set[Any] = set()
        quantized = False
        for i in range(network.num_inputs):
            dtypes.add(network.get_input(i).dtype)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE, trt.LayerType.DYNAMIC_QUANTIZE):
                quantized = True
            for j in range(layer.num_outputs):
                dtypes.add(layer.get_output(j).dtype)
        return dtypes, quantized

    def _input_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The input's shape with every dynamic dimension but the batch filled in (H and W from model.input_size)."""
        dims = list(shape)
        if len(dims) == 4 and self._model.input_size is not None:
            width, height = self._model.input_size
            nhwc = 0 < dims[3] <= 4 and not 0 < dims[1] <= 4  # channels last
            for axis, value in zip((1, 2) if nhwc else (2, 3), (height, width)):
                if dims[axis] == -1:
                    dims[axis] = value
        if any(d < 0 for d in dims[1:]):
            raise BackendError(
                f"model input {name!r} has dynamic dimensions {list(shape)}: TensorRT needs them fixed; set "
                "model.input_size = [width, height] (only the batch dimension may stay dynamic)"
            )
        return tuple(dims)

    def _add_profile(
        self, builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, logger: TrtLogger
    ) -> None:
        """One optimization profile: batch min/opt/max for every input whose dimension 0 is dynamic."""
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            declared = tuple(tensor.shape)
            shape = self._input_shape(tensor.name, declared)
            if -1 not in declared:
                continue
            dynamic = True
            if shape[0] == -1:
                lo, opt, hi = ((batch, *shape[1:]) for batch in (self._min_batch, self._opt_batch, self._max_batch))
            else:
                lo = opt = hi = shape
            profile.set_shape(tensor.name, lo, opt, hi)
        if dynamic and config.add_optimization_profile(profile) < 0:
            raise BackendError(f"TensorRT rejected the optimization profile: {logger.describe_errors()}")

    def _load_timing_cache(self, config: trt.IBuilderConfig, path: Path) -> None:
        """Start from the timing cache file if there is one; a cache from another GPU or TensorRT is replaced."""
        data = b""
        if path.is_file():
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("timing cache %s: cannot read it (%s); starting a new one", path, exc.strerror)
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return
        log.warning("timing cache %s does not match this GPU or TensorRT version; starting a new one", path)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise BackendError("TensorRT could not create an empty timing cache")

    def _save_timing_cache(self, config: trt.IBuilderConfig, path: Path) -> None:
        cache = config.get_timing_cache()
        if cache is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, bytes(memoryview(cache.serialize())))
        except OSError as exc:  # a lost timing cache only makes the next build slower
            log.warning("timing cache %s: cannot write it (%s)", path, exc.strerror)

    # -- load ----------------------------------------------------------------------------------------------

    def load(self, artifact_path: Path) -> DeviceRuntime:
        trt = self._trt
        options = self._options
        logger = TrtLogger.create(trt)
        _load_plugins(trt, options.plugins, logger)
        runtime = trt.Runtime(logger)
        if options.version_compatible:
            runtime.engine_host_code_allowed = True  # the plan carries its lean runtime (host code): we built it
        if not self._v11 and options.dla_core is not None:
            runtime.DLA_core = options.dla_core
        try:
            data = artifact_path.read_bytes()
        except OSError as exc:
            raise ArtifactInvalid(f"{artifact_path}: cannot read the engine: {exc.strerror}") from None
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ArtifactInvalid(
                f"{artifact_path}: TensorRT {trt.__version__} cannot load this engine: {logger.describe_errors()}"
            )
        io = self._verify_io(engine, artifact_path)
        gpu = self._cuda.device_properties(self._engine.device)
        executor = TensorRTExecutor(
            engine,
            io,
            max_batch=self._max_batch,
            streams=self._engine.streams_for("tensorrt"),
            trt=trt,
            cuda=self._cuda,
            device=f"{gpu['name']} (cuda:{self._engine.device})" if self._engine.device else gpu["name"],
            keep_alive=(runtime, logger),
            logger=logger,
            details={
                "compute_capability": gpu["compute_capability"],
                "precision": options.precision,
                "plan": str(artifact_path),
            },
        )
        return DeviceRuntime(
            executor,
            streams=self._engine.streams_for("tensorrt"),
            device=self._engine.device,
            cuda_graphs=self._engine.cuda_graphs,
            cuda=self._cuda,
            frame_transfer=frame_transfer_for(self._engine.frame_transfer),
            hold_gil=self._engine.hold_gil_for_enqueues,
        )

    def _verify_io(self, engine: trt.ICudaEngine, path: Path) -> list[_IO]:
        """The engine's inputs and outputs, checked against what this configuration needs."""
        trt = self._trt
        io: list[_IO] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            if mode not in (trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT):
                raise ArtifactInvalid(f"{path}: tensor {name!r} is neither an input nor an output")
            is_input = mode == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError:
                raise BackendError(
                    f"tensor {name!r} has type {engine.get_tensor_dtype(name)}, which numpy cannot hold; "
                    "export the model with FP32/FP16/INT inputs and outputs"
                ) from None
            batch_range = None
            if is_input:
                if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                    raise BackendError(f"input {name!r} is a shape tensor (host memory): not supported")
                if any(d < 0 for d in shape[1:]):
                    raise ArtifactInvalid(f"{path}: input {name!r} has dynamic dimensions {list(shape)} besides the batch")
                if shape[0] < 0:
                    lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                    batch_range = (int(lo[0]), int(hi[0]))
                    if batch_range[0] > self._min_batch or batch_range[1] < self._max_batch:
                        raise ArtifactInvalid(
                            f"{path}: input {name!r} accepts batches {batch_range[0]}..{batch_range[1]}, "
                            f"not {self._min_batch}..{self._max_batch} (engine.max_batch changed?)"
                        )
            io.append(_IO(name, is_input, shape, dtype, batch_range))
        if not any(t.is_input for t in io) or all(t.is_input for t in io):
            raise ArtifactInvalid(f"{path}: the engine needs at least one input and one output")
        return io


@dataclass(frozen=True)
class _IO:
    """One engine tensor as the backend sees it."""

    name: str
    is_input: bool
    shape: tuple[int, ...]  # engine shape: -1 on a dynamic batch
    dtype: np.dtype
    batch_range: tuple[int, int] | None  # the profile's batch min and max, for a dynamic-batch input


class TensorRTExecutor:
    """Runs a deserialized TensorRT engine for :class:`daemon.gpu.runtime.DeviceRuntime`: one execution
    context per stream (a context must not run on two streams at once; the slots of one stream take turns
    on its context, like Triton's tensorrt_backend), on the device buffers and the stream the runtime
    gives each slot."""

    def __init__(
        self,
        engine: trt.ICudaEngine,
        io: list[_IO],
        *,
        max_batch: int,
        streams: int,
        trt: Any,
        cuda: Any,
        device: str,
        logger: TrtLogger,
        keep_alive: tuple[Any, ...] = (),
        details: dict[str, Any] | None = None,
    ):
        self._trt = trt
        self._cuda = cuda
        self._engine = engine
        self._keep_alive = keep_alive  # the Runtime must outlive its engine
        self._logger = logger
        self._inputs = [t for t in io if t.is_input]
        self._outputs = [t for t in io if not t.is_input]
        self._contexts: list[Any] = []

        batch_limit = max_batch
        for tensor in self._inputs:
            limit = tensor.batch_range[1] if tensor.batch_range else tensor.shape[0]
            batch_limit = min(batch_limit, limit)
        if batch_limit < max_batch:
            log.warning("the engine takes batches up to %d; engine.max_batch=%d lowered to it", batch_limit, max_batch)
        self._max_batch = batch_limit
        # The profile's smallest batch (engine.tensorrt.min_batch): a smaller batch from the scheduler runs
        # padded to it (the extra rows hold whatever the slot held; their results are not copied back).
        min_run = max((t.batch_range[0] for t in self._inputs if t.batch_range), default=1)
        try:
            for _ in range(streams):
                context = engine.create_execution_context()
                if context is None:
                    raise BackendError(f"TensorRT could not create an execution context: {logger.describe_errors()}")
                self._contexts.append(context)
            output_shapes = self._output_shapes(self._contexts[0])
        except BaseException:
            self.close()
            raise
        self.info = ExecutorInfo(
            name="tensorrt",
            version=str(trt.__version__),
            device=device,
            inputs=tuple(TensorSpec(t.name, t.dtype, t.shape) for t in self._inputs),
            outputs=tuple(TensorSpec(t.name, t.dtype, output_shapes[t.name]) for t in self._outputs),
            max_batch=batch_limit,
            min_batch=min(min_run, batch_limit),
            details=details or {},
        )

    def _output_shapes(self, context: trt.IExecutionContext) -> dict[str, tuple[int, ...]]:
        """Output shapes at the largest batch (TensorRT infers them once the input shapes are set)."""
        for tensor in self._inputs:
            shape = _run_shape(tensor, self._max_batch)
            if tensor.batch_range is not None and not context.set_input_shape(tensor.name, shape):
                raise BackendError(f"TensorRT rejected batch {self._max_batch} for input {tensor.name!r}")
        shapes = {}
        for tensor in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in shape):
                raise BackendError(
                    f"output {tensor.name!r} has a data-dependent shape {list(shape)}: not supported by this backend"
                )
            shapes[tensor.name] = (-1, *shape[1:]) if tensor.shape[0] < 0 else shape
        return shapes

    def bind(self, stream_index: int, stream: Any, addresses: dict[str, int]) -> _TensorRTSlot:
        if self._engine is None:
            raise BackendError("the TensorRT backend is closed")
        context: trt.IExecutionContext = self._contexts[stream_index]
        return _TensorRTSlot(self._inputs, context, stream, tuple(addresses.items()), self._cuda, self._logger)

    def close(self) -> None:
        self._contexts.clear()  # contexts go before their engine, the engine before the runtime
        self._engine = None
        self._keep_alive = ()


def _run_shape(tensor: _IO, batch: int) -> tuple[int, ...]:
    return (batch, *tensor.shape[1:]) if tensor.batch_range is not None else tensor.shape


class _TensorRTSlot:
    """One slot on its stream's context: shapes and this slot's addresses are set before every enqueue
    (the slots of a stream share the context). A captured batch freezes them, so a replay sets nothing."""

    def __init__(self, inputs: list[_IO], context: trt.IExecutionContext, stream: Any, addresses: tuple[tuple[str, int], ...], cuda: Any, logger: TrtLogger):
        self._inputs = inputs
        self._context = context
        self._stream = stream
        self._addresses = addresses
        self._cuda = cuda
        self._logger = logger

    def enqueue(self, batch: int) -> None:
        context: trt.IExecutionContext = self._context
        for tensor in self._inputs:
            if tensor.batch_range is not None and not context.set_input_shape(tensor.name, _run_shape(tensor, batch)):
                raise BackendError(f"TensorRT rejected batch {batch} for input {tensor.name!r}")
        for name, address in self._addresses:
            if not context.set_tensor_address(name, address):
                raise BackendError(f"TensorRT rejected the device address of {name!r}")
        if not context.execute_async_v3(self._stream.handle):
            raise BackendError(f"TensorRT could not enqueue the batch: {self._logger.describe_errors()}")

    def capture(self, batch: int) -> _CapturedGraph:
        """trtexec's pattern: one plain enqueue with the final shapes and addresses (it flushes TensorRT's
        one-time setup), wait for it, then capture a second one."""
        self.enqueue(batch)
        self._stream.synchronize()
        return _CapturedGraph(self._cuda.capture_graph(self._stream, lambda: self.enqueue(batch)), self._stream)


class _CapturedGraph:
    def __init__(self, graph: Any, stream: Any):
        self._graph = graph
        self._stream = stream

    def replay(self) -> None:
        self._graph.launch(self._stream)

    def close(self) -> None:
        self._graph.close()
