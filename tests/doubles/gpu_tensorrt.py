"""A TEST DOUBLE of the ``tensorrt`` module that runs the real model on the GPU: ``GpuTensorRT(version).module``.

This is NOT TensorRT. TensorRT cannot be installed where trtstream's GPU tests run (its libraries come only
from NVIDIA's index), so this stands in for it, to test everything around it on a real GPU:

* **Stood in for:** TensorRT itself, that is its builder, its plan, its kernels and their numerics. The
  "engine" is the JSON plan of :class:`~tests.doubles.fake_tensorrt.FakeTensorRT` (the API surface of one
  real release, calls checked and recorded as there), which names the ONNX file it was parsed from; at
  ``execute_async_v3`` that ONNX model runs in PyTorch (converted by onnx2torch), not in TensorRT. Nothing
  learnt from this double says whether TensorRT builds a model, how fast it runs it, or what its FP16/INT8
  kernels compute.
* **Real:** what surrounds the engine. trtstream's TensorRT adapter (``daemon/backends/tensorrt.py``) and
  the GPU runtime around it, with their device buffers (the model reads its inputs and writes its outputs
  at the raw addresses given to ``set_tensor_address``, in the shapes given to ``set_input_shape``), CUDA
  streams (the model runs on the stream handle given to ``execute_async_v3``), events, the raw stream
  capture of ``execute_async_v3`` into CUDA graphs and their replays, GPU preprocessing, NVDEC and device
  decoding. A wrong address, shape, dtype, stream order or stale graph gives wrong detections here.

What ``execute_async_v3`` does, to behave as a TensorRT engine does for the code around it:

* It only enqueues work on the given stream (``torch.cuda.ExternalStream`` over the handle) and never
  synchronises with the host, so a caller may capture it with ``cudaStreamBeginCapture(stream,
  cudaStreamCaptureModeThreadLocal)``; the torch views over the raw buffers are made once per (address,
  shape, dtype) and reused, so a capture after one plain enqueue (trtexec's pattern) creates none.
  ``daemon.backends.torch._keep_shape_constants_on_host`` keeps onnx2torch's shape constants off the device.
* Every torch allocation it makes comes from a private ``torch.cuda.MemPool`` of the execution context
  (``torch.cuda.use_mem_pool``, torch >= 2.6), as TensorRT gives each context its own activation memory:
  the blocks a captured graph bakes in are only ever reused by this context, on its stream, so a raw
  capture that torch's allocator knows nothing about never shares memory with another stream.
* The engine's IO dtypes are the ONNX's (as a strongly typed TensorRT engine's are); the model runs in
  fp16 inside (inputs cast, outputs cast back by ``out.copy_``) only when the plan was built with
  ``BuilderFlag.FP16`` (TensorRT 10 weak typing, ``engine.tensorrt.precision = "fp16"``), in bf16 with
  ``BF16``, else in the ONNX's own precision (TensorRT 11 is always strongly typed).
* A failure returns False after an ERROR through the engine's logger, as TensorRT does; a plan that names
  no ONNX file (built by a plain FakeTensorRT) does not deserialize.

A daemon subprocess gets this double as ``import tensorrt`` through the shim package in
``tests/doubles/tensorrt_gpu_double`` (:func:`shim_environment`), which prints :data:`WARNING_LINE` to stderr.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .fake_tensorrt import _NUMPY, FakeTensorRT

__all__ = ["GpuTensorRT", "SHIM_DIR", "VERSION_ENV", "WARNING_LINE", "shim_environment"]

WARNING_LINE = "tensorrt: GPU TEST DOUBLE (tests/doubles/gpu_tensorrt.py): the model runs in torch; TensorRT itself is not installed"
SHIM_DIR = Path(__file__).resolve().parent / "tensorrt_gpu_double"  # holds the package ``tensorrt``
VERSION_ENV = "TRTSTREAM_TRT_DOUBLE_VERSION"

_CALLS_KEPT = 10_000  # a daemon makes four recorded calls per batch: keep the recent ones only
_VIEWS_KEPT = 1024  # per context: (address, shape, dtype) combinations seen (slots x batch sizes)


def shim_environment(version: str | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that make a subprocess import this double as ``tensorrt``: PYTHONPATH with
    the shim first (then what ``base``, default ``os.environ``, had), and the release to mimic."""
    base = os.environ if base is None else base
    path = [str(SHIM_DIR), *(p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {"PYTHONPATH": os.pathsep.join(path)}
    if version is not None:
        env[VERSION_ENV] = version
    return env


class GpuTensorRT(FakeTensorRT):
    """A :class:`FakeTensorRT` whose parser reads the ONNX model's real IO and whose engines run the model on
    the GPU in torch (see the module's docstring for what is real and what is not). ``executor`` is the
    object doing that; ``calls`` keeps the last calls only, unless a list is passed."""

    executor: _TorchExecutor

    def __init__(self, version: str = "11.1", *, calls: Any = None):
        super().__init__(
            version,
            calls=calls if calls is not None else deque(maxlen=_CALLS_KEPT),
            executor=_TorchExecutor(),
            model_from_onnx=True,
        )


@dataclass(eq=False)
class _ContextState:
    """What the double keeps per execution context: its memory pool and its views of the raw buffers."""

    pool: Any  # torch.cuda.MemPool: this context's "activation memory"
    device: int
    module: Any  # the engine's model on this GPU (shared by the engine's contexts)
    dtype: Any  # what it computes in: None (the ONNX's types), torch.float16 or torch.bfloat16
    views: dict[tuple, Any] = field(default_factory=dict)  # (address, shape, DataType name) -> torch tensor


class _CudaArray:
    """Raw device memory described by ``__cuda_array_interface__``, for torch to view (not own)."""

    def __init__(self, address: int, shape: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (int(address), False), "version": 3, "strides": None}


_POOLS_KEPT: list = []  # every context's pool, for the life of the process (a test double: a few per run)


class _TorchExecutor:
    """The :class:`~tests.doubles.fake_tensorrt.Executor` of :class:`GpuTensorRT`: the ONNX model in torch."""

    def __init__(self) -> None:
        self._torch: Any = None
        self._lock = threading.Lock()
        self._converted: dict[tuple, Any] = {}  # (path, mtime_ns, size) -> onnx2torch module, on the host
        self._modules: dict[tuple, Any] = {}  # (file key, compute dtype, device) -> module on that GPU
        self._streams: dict[tuple[int, int], Any] = {}  # (handle, device) -> torch.cuda.ExternalStream
        self.executions = 0  # execute() calls that enqueued the model (captured ones included)

    # -- set-up (at deserialize_cuda_engine, and outside any capture) --------------------------------------
    def _import(self) -> Any:
        if self._torch is None:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("the GPU TensorRT double needs a CUDA GPU (torch.cuda.is_available() is False)")
            if not (hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")):
                raise RuntimeError(f"the GPU TensorRT double needs torch.cuda.MemPool and use_mem_pool (torch >= 2.6), not torch {torch.__version__}")
            self._torch = torch
        return self._torch

    def load(self, plan: dict) -> None:
        """Convert the plan's ONNX model for the current GPU now, so the first execute only runs it."""
        torch = self._import()
        self._module(plan, torch.cuda.current_device())

    def _compute_dtype(self, plan: dict) -> Any:
        """fp16/bf16 inside when the build asked TensorRT 10 for it (weak typing); else the ONNX's own types."""
        torch = self._torch
        if plan.get("strongly_typed"):
            return None
        flags = set(plan.get("flags", ()))
        if "FP16" in flags:
            return torch.float16
        if "BF16" in flags:
            return torch.bfloat16
        return None

    def _module(self, plan: dict, device: int) -> tuple[Any, Any]:
        source = plan.get("onnx")
        if not source:
            raise RuntimeError("the plan names no ONNX model: it was not built by the GPU double (FakeTensorRT(model_from_onnx=True))")
        stat = Path(source).stat()
        file_key = (str(source), stat.st_mtime_ns, stat.st_size)
        dtype = self._compute_dtype(plan)
        key = (file_key, str(dtype), device)
        module = self._modules.get(key)
        if module is None:
            with self._lock:
                module = self._modules.get(key)
                if module is None:
                    module = self._modules[key] = self._convert(file_key, dtype, device)
        return module, dtype

    def _convert(self, file_key: tuple, dtype: Any, device: int) -> Any:
        import onnx2torch

        from daemon.backends.torch import _keep_shape_constants_on_host

        converted = self._converted.get(file_key)
        if converted is None:  # once per ONNX file
            converted = self._converted[file_key] = onnx2torch.convert(file_key[0]).eval()
        module = copy.deepcopy(converted).eval().to(f"cuda:{device}")  # Module.to moves in place: keep the cached one
        if dtype is not None:
            module = module.to(dtype)
        _keep_shape_constants_on_host(module)
        return module

    def _state(self, context: Any, plan: dict, device: int) -> _ContextState:
        """The context's state on ``device``, made at its first execute there (the plain enqueue before any
        capture) and kept as long as the context: a graph captured from it may use its pool's blocks."""
        states = getattr(context, "_gpu_double", None)
        if states is None:
            states = {}
            object.__setattr__(context, "_gpu_double", states)
        state = states.get(device)
        if state is None:
            module, dtype = self._module(plan, device)
            state = states[device] = _ContextState(pool=self._torch.cuda.MemPool(), device=device, module=module, dtype=dtype)
            _POOLS_KEPT.append(state.pool)  # never destroyed while the process runs: torch asserts when a pool dies during a capture
        return state

    def _stream(self, handle: int, device: int) -> Any:
        stream = self._streams.get((handle, device))
        if stream is None:
            stream = self._streams[(handle, device)] = self._torch.cuda.ExternalStream(handle, device=device)
        return stream

    def _view(self, state: _ContextState, address: int, shape: tuple[int, ...], dtype: str) -> Any:
        key = (address, shape, dtype)
        view = state.views.get(key)
        if view is None:
            if dtype not in _NUMPY:
                raise RuntimeError(f"the GPU double cannot view a {dtype} tensor")
            if len(state.views) >= _VIEWS_KEPT:
                state.views.clear()
            typestr = np.dtype(_NUMPY[dtype]).str
            view = state.views[key] = self._torch.as_tensor(_CudaArray(address, shape, typestr), device=f"cuda:{state.device}")
        return view

    # -- execute_async_v3 ----------------------------------------------------------------------------------
    @staticmethod
    def _shapes(plan: dict, shapes: dict[str, tuple[int, ...]]) -> tuple[list[tuple[str, tuple, str]], list[tuple[str, tuple, str]]]:
        """Every input's shape (set, or the engine's static one) and every output's (the engine's, with the
        batch of the first input), as TensorRT infers them."""
        inputs = [(t["name"], tuple(shapes.get(t["name"], t["shape"])), t["dtype"]) for t in plan["inputs"]]
        first = plan["inputs"][0]
        batch = inputs[0][1][0]
        outputs = []
        for t in plan["outputs"]:
            shape = tuple(batch if axis == 0 and d == -1 and first["shape"][0] == -1 else d for axis, d in enumerate(t["shape"]))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {t['name']!r} has a data-dependent shape {list(t['shape'])}: the GPU double cannot size it")
            outputs.append((t["name"], shape, t["dtype"]))
        return inputs, outputs

    def execute(self, context: Any, plan: dict, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int], stream_handle: int) -> None:
        torch = self._import()
        device = torch.cuda.current_device()
        state = self._state(context, plan, device)
        module, dtype = state.module, state.dtype
        stream = self._stream(stream_handle, device)
        in_shapes, out_shapes = self._shapes(plan, shapes)
        xs = [self._view(state, addresses[name], shape, kind) for name, shape, kind in in_shapes]
        ys = [(name, self._view(state, addresses[name], shape, kind)) for name, shape, kind in out_shapes]
        # use_mem_pool is entered on the default stream: newer torch asks whether the *current* stream is
        # capturing when it is entered (for torch.cuda.graph's bookkeeping), and the caller's raw capture is
        # not torch's. The model then runs on the caller's stream, every allocation from this context's pool.
        with torch.cuda.stream(torch.cuda.default_stream(device)), torch.cuda.use_mem_pool(state.pool, device=device):
            with torch.cuda.stream(stream), torch.inference_mode():
                args = [x.to(dtype) if dtype is not None and x.is_floating_point() else x for x in xs]
                results = module(*args)
                results = tuple(results) if isinstance(results, (tuple, list)) else (results,)
                if len(results) != len(ys):
                    raise RuntimeError(f"the model gives {len(results)} outputs, the engine has {len(ys)}")
                for (name, out), result in zip(ys, results):
                    if tuple(result.shape) != tuple(out.shape):
                        raise RuntimeError(f"output {name!r}: the model gives {list(result.shape)}, the engine's is {list(out.shape)}")
                    out.copy_(result)  # into the caller's buffer, in the engine's dtype
                del args, results  # back to this context's pool, reused only by later work on this stream
        self.executions += 1
