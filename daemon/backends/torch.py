"""PyTorch on an NVIDIA GPU: the executor for GPUs without TensorRT (:class:`TorchExecutor`).

The ONNX model is converted once with onnx2torch (eager modules: its Resize converter breaks
torch.export), optionally cast to fp16 and to channels-last memory order. It runs inside the shared GPU
runtime (:class:`daemon.gpu.runtime.DeviceRuntime`), exactly where a TensorRT engine runs: on *our*
CUDA streams (``torch.cuda.ExternalStream`` over :class:`daemon.cuda.Stream`), reading the slot's device
input buffer and writing its device output buffer (torch tensors over the runtime's own allocations).
Each slot replays it as CUDA graphs captured per batch size with ``torch.cuda.graph`` (its private
memory pool keeps the graphs' blocks away from other streams).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from ..gpu.runtime import DeviceRuntime, ExecutorInfo, frame_transfer_for
from .base import TensorSpec

__all__ = ["TorchExecutor", "torch_backend", "torch_usable"]

log = logging.getLogger("trtstream.backends.torch")

_ONNX_TYPES = {1: np.float32, 10: np.float16, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64}


def torch_usable() -> bool:
    try:
        import onnx2torch  # noqa: F401
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


def _specs(model_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, np.dtype(_ONNX_TYPES.get(tensor.elem_type, np.float32)), shape)

    return tuple(spec(v) for v in graph.input if v.name not in initializers), tuple(spec(v) for v in graph.output)


# onnx2torch modules whose inputs after the first are shapes, indices or scales read on the host.
_HOST_ARGUMENT_MODULES = {"OnnxResize", "OnnxResizeV10", "OnnxSlice", "OnnxReshape", "OnnxExpand", "OnnxTile"}


def _keep_shape_constants_on_host(module) -> int:
    """onnx2torch's Resize, Slice, Reshape, Expand and Tile read their constant scales, starts, shapes
    with ``.tolist()``, ``.numpy()`` or ``torch.Size(...)``: on a GPU tensor each is a device-to-host
    copy that syncs every forward and forbids CUDA graph capture. Keep those constants (graph
    initializers of a few numbers) in host memory. Returns how many were moved."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    moved = 0
    for node in graph.nodes:
        if node.op != "call_module" or type(module.get_submodule(node.target)).__name__ not in _HOST_ARGUMENT_MODULES:
            continue
        for arg in (*node.args[1:], *node.kwargs.values()):
            if getattr(arg, "op", None) != "get_attr":
                continue
            owner_path, _, name = arg.target.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            tensor = owner._buffers.get(name)
            if tensor is not None and tensor.numel() <= 16 and tensor.device.type != "cpu":
                owner._buffers[name] = tensor.cpu()
                moved += 1
    return moved


def _run_host_argument_modules_eagerly(module, torch) -> int:
    """Leave onnx2torch's shape-reading modules out of torch.compile's graphs: dynamo traces their host
    constants as fake tensors and fails in ``torch.Size(...)``. Each becomes a graph break, run eagerly
    between compiled pieces; the Python cost of a break is paid once, at CUDA graph capture, since the
    serving path replays the captured graph. Returns how many modules were marked."""
    marked = 0
    for sub in module.modules():
        if type(sub).__name__ in _HOST_ARGUMENT_MODULES:
            sub.forward = torch.compiler.disable(sub.forward, recursive=True)
            marked += 1
    return marked


def _to_channels_last(module, torch) -> None:
    """The 4-D weights (convolutions) in NHWC order; other parameters and buffers stay as they are
    (``Module.to(memory_format=...)`` refuses a model holding any tensor of another rank)."""
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None and param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        for name, buffer in owner._buffers.items():
            if buffer is not None and buffer.dim() == 4:
                owner._buffers[name] = buffer.contiguous(memory_format=torch.channels_last)


_TYPESTR = {np.dtype(np.float32): "<f4", np.dtype(np.float16): "<f2"}


class _DeviceArray:
    """A raw device allocation described by ``__cuda_array_interface__``, for torch to view (not own)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": _TYPESTR[np.dtype(dtype)], "data": (int(ptr), False), "version": 3, "strides": None}


class TorchExecutor:
    """An ONNX model converted to torch, run on the runtime's streams and buffers (device input in the
    compute dtype, float32 outputs: what the host decodes)."""

    def __init__(self, model_path: Path, max_batch: int, *, half: bool = True, device: int = 0, channels_last: bool = True,
                 compile_model: bool = False, compile_cache: Path | None = None):
        import onnx2torch
        import torch

        if not torch.cuda.is_available():
            raise BackendError("the torch backend needs a CUDA GPU")
        torch.cuda.set_device(device)
        inputs, outputs = _specs(model_path)
        try:
            module = onnx2torch.convert(str(model_path))
        except Exception as exc:
            raise BackendError(f"{model_path}: onnx2torch cannot convert the model: {str(exc).splitlines()[0]}") from None
        self._torch = torch
        self._device = f"cuda:{device}"
        module = module.eval().to(self._device)
        if half:
            module = module.half()
        self._channels_last = channels_last and all(len(s.shape) == 4 for s in inputs)
        if self._channels_last:
            _to_channels_last(module, torch)
        _keep_shape_constants_on_host(module)
        self.module = module
        self._compute_dtype = torch.float16 if half else torch.float32
        self._inputs = inputs
        self._run_module = module
        compiled = self._compiled(module, max_batch, compile_cache) if compile_model else None
        if compiled is not None:
            self._run_module = compiled
        self._streams: dict[int, Any] = {}
        name = torch.cuda.get_device_name(device)
        self.info = ExecutorInfo(
            name="torch",
            version=torch.__version__,
            device=f"{name} (cuda:{device})",
            # The device input is what preprocessing writes: fp16 halves the copy when the model runs in fp16.
            inputs=tuple(TensorSpec(s.name, np.dtype(np.float16) if half else s.dtype, s.shape) for s in inputs),
            outputs=tuple(TensorSpec(s.name, np.dtype(np.float32), s.shape) for s in outputs),
            max_batch=max_batch,
            details={"half": half, "channels_last": self._channels_last, "compiled": compiled is not None},
        )

    def _compiled(self, module, max_batch: int, cache: Path | None):
        """``module`` compiled by TorchInductor (fused elementwise work between the convolutions), or None
        (logged) when it cannot be: the converted model then runs as it is. Compiled here, on batches of
        batches of ``max_batch``, 2 and 1 (the batch dimension dynamic: every captured size is served), so that no
        compilation happens during graph capture and the start-up cost shows at start-up. Its kernels are
        cached on disk (``cache``: in the engine cache, so a restart compiles in seconds)."""
        torch = self._torch
        from . import USER_COMPILER_CACHE_DIRS as users

        if cache is not None and users["TORCHINDUCTOR_CACHE_DIR"] is None:
            cache.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # inductor reads it at each use
            if users["TRITON_CACHE_DIR"] is None:
                os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
        started = time.perf_counter()
        try:
            _run_host_argument_modules_eagerly(module, torch)
            compiled = torch.compile(module)
            spec = self._inputs[0]
            with torch.inference_mode():
                # max_batch with its batch dimension dynamic; then 2, at which the pieces between graph breaks
                # (first compiled at max_batch's size) recompile dynamic too; then 1, which torch specialises.
                for batch in sorted({max_batch, min(2, max_batch), 1}, reverse=True):
                    x = torch.zeros((batch, *spec.shape[1:]), dtype=self._compute_dtype, device=self._device)
                    if self._channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if batch > 1:
                        torch._dynamo.mark_dynamic(x, 0)  # the batch only: kernels keep the model's fixed image size
                    compiled(x)
            torch.cuda.synchronize()
        except Exception as exc:  # a model dynamo or inductor cannot take: serve it uncompiled
            torch._dynamo.reset()
            log.warning("torch.compile failed (%s: %s): running the converted model uncompiled",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None
        log.info("torch.compile: the model compiled in %.1f s (kernels cached in %s)", time.perf_counter() - started,
                 os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default cache"))
        return compiled

    def forward(self, x):
        """The model on a batch in device memory (NCHW); returns its outputs as a tuple."""
        if self._channels_last:
            x = x.contiguous(memory_format=self._torch.channels_last)
        outputs = self._run_module(x)
        return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)

    def view(self, ptr: int, spec: TensorSpec, batch: int):
        """A torch tensor over ``batch`` rows of device memory at ``ptr`` (owned by the runtime)."""
        return self._torch.as_tensor(_DeviceArray(ptr, spec.with_batch(batch), spec.dtype), device=self._device)

    def bind(self, stream_index: int, stream: Any, addresses: dict[str, int]) -> _TorchSlot:
        torch_stream = self._streams.get(stream_index)
        if torch_stream is None:
            torch_stream = self._streams[stream_index] = self._torch.cuda.ExternalStream(stream.handle, device=self._device)
        batch = self.info.max_batch
        inputs = [self.view(addresses[s.name], s, batch) for s in self.info.inputs]
        outputs = [self.view(addresses[s.name], s, batch) for s in self.info.outputs]
        return _TorchSlot(self, torch_stream, inputs, outputs, stream)

    def close(self) -> None:
        self._streams.clear()


class _TorchSlot:
    def __init__(self, executor: TorchExecutor, stream: Any, inputs: list, outputs: list, runtime_stream: Any):
        self._executor = executor
        self._torch = executor._torch
        self._stream = stream
        self._runtime_stream = runtime_stream  # the daemon.cuda.Stream that torch's ExternalStream wraps
        self._inputs = inputs
        self._outputs = outputs
        self._pool = None  # one memory pool for this slot's graphs (they never run at the same time)

    def _run(self, batch: int) -> None:
        results = self._executor.forward(self._inputs[0][:batch])
        for out, value in zip(self._outputs, results):
            out[:batch].copy_(value)  # into the runtime's buffer, cast to float32

    def enqueue(self, batch: int) -> None:
        torch = self._torch
        # An eager result is freed after this call, and its block is reused only by later work on this
        # same stream, which runs after the copy: no record_stream needed.
        with torch.cuda.stream(self._stream), torch.inference_mode():
            self._run(batch)

    def capture(self, batch: int) -> _TorchGraph:
        """This batch size once eagerly on a side stream (lazy initialisation and cuDNN's choices happen
        outside the capture), then captured into a graph drawing on the slot's memory pool."""
        torch = self._torch
        side = torch.cuda.Stream(device=self._stream.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            side.wait_stream(self._stream)
            with torch.cuda.stream(side):
                self._run(batch)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=side, capture_error_mode="thread_local"):
                self._run(batch)
        torch.cuda.synchronize()
        return _TorchGraph(graph, self._stream, torch, self._runtime_stream)


class _TorchGraph:
    """A captured batch. On a stream that holds the GIL for its enqueues, the instantiated graph is
    launched directly (``raw_cuda_graph_exec``, one ``cuGraphLaunch`` that keeps the GIL); otherwise
    through torch's ``replay``, which releases it. Inference draws no random numbers, so skipping what
    ``replay`` adds (the generators' offsets) changes nothing."""

    def __init__(self, graph: Any, stream: Any, torch: Any, runtime_stream: Any):
        self._graph = graph
        self._stream = stream
        self._torch = torch
        self._runtime_stream = runtime_stream
        self._exec: int | None = None
        if runtime_stream.hold_gil:
            try:
                self._exec = int(graph.raw_cuda_graph_exec())
            except (AttributeError, RuntimeError):  # an older torch, or a graph it has not instantiated
                self._exec = None

    def replay(self) -> None:
        if self._exec is not None:
            from .. import cuda_enqueue

            cuda_enqueue.graph_launch(self._exec, self._runtime_stream.handle)
            return
        with self._torch.cuda.stream(self._stream):
            self._graph.replay()

    def close(self) -> None:
        self._graph = None


def torch_backend(
    model_path: Path, max_batch: int, streams: int, *, half: bool = True, device: int = 0, cuda_graphs: bool = True, channels_last: bool = True,
    frame_transfer: str = "auto", hold_gil: bool = True, compile_model: bool = False, compile_cache: Path | None = None,
) -> DeviceRuntime:
    """The torch backend: the GPU runtime around a :class:`TorchExecutor`."""
    executor = TorchExecutor(model_path, max_batch, half=half, device=device, channels_last=channels_last, compile_model=compile_model,
                             compile_cache=compile_cache)
    return DeviceRuntime(executor, streams=streams, device=device, cuda_graphs=cuda_graphs, frame_transfer=frame_transfer_for(frame_transfer),
                         hold_gil=hold_gil)
