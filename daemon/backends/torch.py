"""PyTorch on an NVIDIA GPU: the backend for GPUs without TensorRT, and how the GPU runtime is proven
where TensorRT cannot be installed.

The ONNX model is converted once with onnx2torch (eager modules: its Resize converter breaks
torch.export) and optionally cast to fp16; each slot replays it as captured CUDA graphs. Everything
runs on *our* CUDA streams (``torch.cuda.ExternalStream`` over :class:`daemon.cuda.Stream`), so the
shape of the work is the one a TensorRT engine gets: per slot, pinned host buffers and device buffers
allocated once, then per batch an async host->device copy, optional GPU preprocessing (uint8 frames ->
input tensor, :mod:`daemon.gpu.preprocess`), the forward pass, an async device->host copy of the
outputs and an event; ``wait`` sleeps on the event.
With S streams and two slots per stream, the CPU fills batch N+1 while the GPU runs batch N.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import cuda
from ..pinned import PinnedImage
from ..errors import BackendError
from .base import BackendInfo, Slot, TensorSpec

__all__ = ["TorchBackend", "torch_usable"]

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


@dataclass
class _SlotState:
    stream: cuda.Stream
    torch_stream: Any
    event: cuda.Event
    host_in: dict[str, np.ndarray]
    host_out: dict[str, np.ndarray]
    device_in: dict[str, Any]  # torch tensors
    # GPU preprocessing: [job table | BGR frames packed back to back], pinned, and its device twin. One
    # host->device copy moves the table and the frames; one kernel launch preprocesses the batch.
    staging_host: np.ndarray | None = None
    staging_device: cuda.DeviceBuffer | None = None
    table: Any = None  # ctypes array of Job over the head of staging_host
    rows: int = 0  # jobs staged for the next submit
    used: int = 0  # bytes of the staging area in use (table included)
    host_end: int = 0  # end of the table and the frames copied into staging_host (what the bulk copy moves)
    pinned_copies: list = field(default_factory=list)  # (offset, PinnedImage): copied from where they were decoded
    keep: list = field(default_factory=list)  # pinned buffers owned by this slot
    graphs: dict = field(default_factory=dict)  # batch size -> captured torch.cuda.CUDAGraph, ascending


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


def _align(nbytes: int, to: int = 256) -> int:
    return (nbytes + to - 1) // to * to


class TorchBackend:
    """An ONNX model run by PyTorch (CUDA graphs, or eager launches) on our own CUDA streams."""

    def __init__(self, model_path: Path, max_batch: int, streams: int, half: bool = True, device: int = 0, cuda_graphs: bool = True):
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
        self._module = module.eval().to(f"cuda:{device}")
        self._half = half
        if half:
            self._module = self._module.half()
        _keep_shape_constants_on_host(self._module)
        self._compute_dtype = torch.float16 if half else torch.float32
        self._streams = [cuda.Stream() for _ in range(streams)]
        self._torch_streams = [torch.cuda.ExternalStream(s.handle, device=f"cuda:{device}") for s in self._streams]
        name = torch.cuda.get_device_name(device)
        # The host-side input is what preprocessing writes: fp16 halves the copy when the model runs in fp16.
        host_inputs = tuple(TensorSpec(s.name, np.dtype(np.float16) if half else s.dtype, s.shape) for s in inputs)
        self.info = BackendInfo(
            name="torch",
            version=torch.__version__,
            device=f"{name} (cuda:{device})",
            inputs=host_inputs,
            outputs=tuple(TensorSpec(s.name, np.dtype(np.float32), s.shape) for s in outputs),
            max_batch=max_batch,
            details={"half": half, "streams": streams, "artifact": None, "cuda_graphs": cuda_graphs},
        )
        self._preprocessor = None
        self._job = None
        self._device_decode = None
        self._frame_bytes = 0
        self._table_bytes = 0
        self._cuda_graphs = cuda_graphs
        self._slots: list[Slot] = []

    # -- GPU preprocessing ------------------------------------------------------------------------
    def enable_gpu_preprocessing(self, normalizer, pad_grey: int, max_frame_bytes: int) -> None:
        """Take uint8 BGR frames (up to ``max_frame_bytes`` each) and preprocess them on the GPU.
        Must be called before slots are created."""
        from ..gpu.preprocess import GpuPreprocessor, Job

        self._preprocessor = GpuPreprocessor(normalizer, pad_grey, self.info.inputs[0].dtype)
        self._job = Job  # the job-table row type, resolved once (stage_frame runs per frame)
        self._frame_bytes = int(max_frame_bytes)

    def enable_device_decoding(self, decode, decoded_shape) -> None:
        """Let the pipeline decode the (single) output on the GPU before the copy back (``decode`` is a
        torch function, captured into the CUDA graphs with the model; ``decoded_shape`` maps the output
        shape to the decoded one). Before slots exist."""
        spec = self.info.outputs[0]
        shape = tuple(decoded_shape(spec.shape))
        self._device_decode = decode
        self.info = BackendInfo(
            self.info.name, self.info.version, self.info.device, self.info.inputs,
            (TensorSpec(spec.name, spec.dtype, shape), *self.info.outputs[1:]), self.info.max_batch,
            {**self.info.details, "device_decoding": list(shape)},
        )  # fmt: skip

    @property
    def device_postprocessed(self) -> bool:
        """Outputs come back already decoded by the pipeline's ``device_decode``."""
        return self._device_decode is not None

    @property
    def gpu_preprocessing(self) -> bool:
        return self._preprocessor is not None

    # -- slots -----------------------------------------------------------------------------------
    def _pinned(self, state: _SlotState, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        buffer = cuda.PinnedBuffer(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        state.keep.append(buffer)
        return buffer.array(dtype, shape)

    def create_slot(self, index: int) -> Slot:
        torch = self._torch
        batch = self.info.max_batch
        which = index % len(self._streams)
        state = _SlotState(self._streams[which], self._torch_streams[which], cuda.Event(), {}, {}, {})
        for spec in self.info.inputs:
            shape = spec.with_batch(batch)
            if any(d < 0 for d in shape):
                raise BackendError(f"input {spec.name!r} has dynamic dimensions {list(spec.shape)}; set model.input_size")
            state.host_in[spec.name] = self._pinned(state, spec.dtype, shape)
            state.device_in[spec.name] = torch.empty(shape, dtype=self._compute_dtype, device="cuda")
        for spec in self.info.outputs:
            if all(d > 0 for d in spec.shape[1:]):
                state.host_out[spec.name] = self._pinned(state, np.float32, spec.with_batch(batch))
        if self._preprocessor is not None:
            self._table_bytes = _align(ctypes.sizeof(self._job) * batch)
            state.staging_host = self._pinned(state, np.uint8, (self._table_bytes + batch * _align(self._frame_bytes),))
            state.staging_device = cuda.DeviceBuffer(state.staging_host.nbytes)
            state.table = (self._job * batch).from_address(state.staging_host.ctypes.data)
        if self._cuda_graphs and index >= 0:
            try:
                self._capture_graphs(state)
            except Exception as exc:  # a model torch cannot capture still runs, eagerly
                state.graphs.clear()
                self._cuda_graphs = False
                torch.cuda.synchronize()
                log.warning("CUDA graph capture failed (%s); running the model eagerly", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        slot = Slot(index=index, inputs=state.host_in, outputs=state.host_out, state=state)
        if index >= 0:
            self._slots.append(slot)
        return slot

    def _start_row(self, state: _SlotState, row: int) -> None:
        if row == 0:
            state.rows, state.used, state.host_end = 0, self._table_bytes, self._table_bytes
            state.pinned_copies.clear()
        if row != state.rows:
            raise BackendError(f"rows must be staged in order (got {row}, expected {state.rows})")

    def stage_frame(self, slot: Slot, row: int, image: np.ndarray, geometry) -> None:
        """GPU preprocessing: append a BGR frame to the slot's pinned staging area (frames are packed
        back to back after the job table, so one host->device copy moves the whole batch)."""
        state: _SlotState = slot.state
        self._start_row(state, row)
        offset = state.used
        if offset + image.nbytes > state.staging_host.nbytes or image.nbytes > self._frame_bytes:
            raise BackendError(
                f"frame of {image.shape[1]}x{image.shape[0]} does not fit the GPU staging area; raise engine.max_frame_size"
            )
        if isinstance(image, PinnedImage) and image.flags.c_contiguous:  # decoded into pinned memory: no CPU copy
            state.pinned_copies.append((offset, image))
        else:
            np.copyto(state.staging_host[offset : offset + image.nbytes].reshape(image.shape), image)  # releases the GIL
            state.host_end = offset + image.nbytes
        state.table[row] = self._job.bgr(state.staging_device.ptr + offset, image.shape[1], image.shape[0], image.shape[1] * 3, geometry)
        state.used = offset + _align(image.nbytes)
        state.rows = row + 1

    def stage_device_frame(self, slot: Slot, row: int, image, geometry) -> None:
        """NVDEC: an NV12 frame already in device memory; the kernel reads it where it is."""
        if self._preprocessor is None:
            raise BackendError("NVDEC frames need GPU preprocessing (engine.preprocess = 'gpu' or 'auto')")
        state: _SlotState = slot.state
        self._start_row(state, row)
        state.table[row] = self._job.nv12(image.y_ptr, image.uv_ptr, image.width, image.height, image.pitch, image.height >= 720, geometry)
        state.rows = row + 1

    # -- inference -------------------------------------------------------------------------------
    def submit(self, slot: Slot, batch_size: int) -> None:
        torch = self._torch
        state: _SlotState = slot.state
        slot.batch_size = batch_size
        stream = state.stream
        name = self.info.inputs[0].name
        device_input = state.device_in[name]
        if self._preprocessor is not None and state.rows:  # (a warm-up batch stages no frames)
            if state.rows < batch_size:
                raise BackendError(f"{state.rows} frames staged for a batch of {batch_size}")
            # Table and frames in one copy, then each frame decoded into pinned memory straight from
            # there (after the bulk copy, which may span their places), then one launch for the batch.
            # NVDEC frames need no copy.
            cuda.memcpy_htod_async(state.staging_device.ptr, state.staging_host[: state.host_end], stream)
            for offset, image in state.pinned_copies:
                cuda.memcpy_htod_async(state.staging_device.ptr + offset, image, stream)
            state.pinned_copies.clear()
            height, width = device_input.shape[2], device_input.shape[3]
            self._preprocessor.batch(stream, state.staging_device.ptr, batch_size, device_input.data_ptr(), width, height)
            state.rows = 0
        elif self._preprocessor is None:
            for input_name, host in state.host_in.items():
                cuda.memcpy_htod_async(state.device_in[input_name].data_ptr(), host[:batch_size], stream)
        with torch.cuda.stream(state.torch_stream), torch.inference_mode():
            graph = self._graph_for(state, batch_size)
            if graph is not None:  # one replay instead of ~100 eager launches under the GIL
                graph.replay()
                outputs = graph.outputs
            else:
                outputs = self._forward(device_input[:batch_size])
            for spec, value in zip(self.info.outputs, outputs):
                # An eager result is freed after this line, and its block is reused only by later work on
                # this same stream, which runs after the copy: no record_stream needed.
                cuda.memcpy_dtoh_async(state.host_out[spec.name][:batch_size], value.data_ptr(), stream)
        state.event.record(stream)

    def _forward(self, x):
        """The model, the pipeline's device decoding, float32 contiguous outputs (what is copied back)."""
        outputs = self._module(x)
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        if self._device_decode is not None:
            outputs = (self._device_decode(outputs[0]), *outputs[1:])
        return tuple(value.float().contiguous() for value in outputs)

    # -- CUDA graphs -----------------------------------------------------------------------------
    def _graph_sizes(self) -> list[int]:
        """Batch sizes captured per slot: powers of two up to max_batch, and max_batch. A batch of n
        replays the smallest size >= n (the rows past n compute on stale input and are ignored)."""
        sizes, size = [], 1
        while size < self.info.max_batch:
            sizes.append(size)
            size *= 2
        return sizes + [self.info.max_batch]

    def _capture_graphs(self, state: _SlotState) -> None:
        """Capture the forward pass once per batch size for this slot, sharing one memory pool (a slot's
        graphs never run at the same time: the slot is reused only after its results were read)."""
        torch = self._torch
        device_input = state.device_in[self.info.inputs[0].name]
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        with torch.inference_mode():
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture (lazy initialisation, algorithm choice)
                self._forward(device_input[: self.info.max_batch])
            torch.cuda.current_stream().wait_stream(side)
            for size in self._graph_sizes():
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                    graph.outputs = self._forward(device_input[:size])
                state.graphs[size] = graph
        torch.cuda.synchronize()

    def _graph_for(self, state: _SlotState, batch_size: int):
        """The smallest captured graph that holds ``batch_size`` rows; None without graphs (eager)."""
        for size, graph in state.graphs.items():  # ascending
            if size >= batch_size:
                return graph
        return None

    def wait(self, slot: Slot, timeout: float | None = None) -> dict[str, np.ndarray]:
        state: _SlotState = slot.state
        state.event.synchronize()
        return {name: array[: slot.batch_size] for name, array in state.host_out.items()}

    def close(self) -> None:
        for stream in self._streams:
            stream.synchronize()
        for slot in self._slots:
            state: _SlotState = slot.state
            state.event.close()
            if state.staging_device is not None:
                state.staging_device.close()
            for buffer in state.keep:
                buffer.close()
        self._slots.clear()
        for stream in self._streams:
            stream.close()
