"""The GPU side of every GPU backend: one runtime, with the model run by an *executor* (TensorRT, torch).

The runtime owns the hot path, the same whichever engine computes: per slot, allocated once, the page-
locked host buffers, the device input and output buffers, the staging area with its job table for GPU
preprocessing, the device decoding buffer and the completion event; per stream, one CUDA stream (two
slots each: the CPU fills one while the GPU runs the other). A batch is, on the slot's stream:

1. the input: one host-to-device copy of the job table and the frames packed behind it, then one NVRTC
   launch that preprocesses every row into the input buffer (:mod:`daemon.gpu.preprocess`; NVDEC
   frames are read where they were decoded), or a copy of rows preprocessed on the CPU;
2. the model: the executor's captured CUDA graph for the smallest captured batch size that holds the
   batch, or a plain enqueue;
3. the output: one NVRTC launch that keeps each image's best detection candidates
   (:mod:`daemon.gpu.decode`), then a device-to-host copy of what is left (a few KB per image), or of the
   raw outputs;
4. an event; :meth:`DeviceRuntime.wait` sleeps on it.

An executor enqueues work on a stream it is given, on device buffers it is given
(:class:`SlotExecution`): TensorRT sets the tensor addresses and calls ``execute_async_v3``; torch runs
the converted module. Each executor captures its own graphs (TensorRT: raw stream capture of
``execute_async_v3``; torch: ``torch.cuda.graph`` with its memory pool). What the runtime can do is
declared in ``info.capabilities``; what it does is chosen once by :meth:`DeviceRuntime.configure`.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ..backends.base import BackendInfo, Capabilities, DeviceWork, Slot, TensorSpec
from ..entities import DeviceFrame
from ..errors import BackendError
from ..pinned import PinnedImage

__all__ = ["FRAME_TRANSFERS", "frame_transfer_for", "ExecutorInfo", "Executor", "SlotExecution", "CapturedBatch", "DeviceRuntime", "graph_batch_sizes", "stage_frame"]

log = logging.getLogger("trtstream.gpu.runtime")


FRAME_TRANSFERS = ("copies", "batched", "mapped")
# engine.frame_transfer = "auto". On an H200 (docs/benchmarks.md, 2026-12-01): one batched call moved the
# frames as fast as a copy each with the host path out of the way (device path 0.944 vs 0.934 x engine-
# only) but the pipeline served fewer frames with it on all three machine starts (0.757 vs 0.797, 0.786 vs
# 0.870, 0.522 vs 0.724 x); mapped reads made the preprocessing kernel 13 x slower (0.81 x). So: a copy each.
AUTO_FRAME_TRANSFER = "copies"


def frame_transfer_for(setting: str) -> str:
    """``engine.frame_transfer`` resolved ("auto" -> :data:`AUTO_FRAME_TRANSFER`)."""
    return AUTO_FRAME_TRANSFER if setting == "auto" else setting


def _align(nbytes: int, to: int = 256) -> int:
    return (nbytes + to - 1) // to * to


@dataclass(frozen=True)
class ExecutorInfo:
    """An executor's model: its device tensors (dtypes as they sit in device memory; dimension 0 is the
    batch, -1 when dynamic) and the batch sizes it runs."""

    name: str
    version: str
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    min_batch: int = 1  # a smaller batch runs padded to this (TensorRT's profile minimum)
    cuda_graphs: bool = True  # whether this executor can capture its enqueue
    details: dict[str, Any] = field(default_factory=dict)


class CapturedBatch(Protocol):
    """One captured enqueue of a fixed batch size, on the slot's buffers."""

    def replay(self) -> None: ...

    def close(self) -> None: ...


class SlotExecution(Protocol):
    """An executor bound to one slot: its stream and its device buffers."""

    def enqueue(self, batch: int) -> None:
        """Run the model on the first ``batch`` rows of the input buffers into the output buffers, on the
        slot's stream; returns without waiting. Raises BackendError."""

    def capture(self, batch: int) -> CapturedBatch:
        """Capture :meth:`enqueue` of ``batch`` rows as a CUDA graph (raises if it cannot)."""


class Executor(Protocol):
    info: ExecutorInfo

    def bind(self, stream_index: int, stream: Any, addresses: dict[str, int]) -> SlotExecution:
        """The executor for one slot on stream ``stream_index`` (slots of one stream run one at a time, so
        they may share per-stream state such as a TensorRT execution context)."""

    def close(self) -> None: ...


def graph_batch_sizes(min_batch: int, max_batch: int) -> list[int]:
    """Batch sizes captured per slot: powers of two from ``min_batch`` up, and ``max_batch``. A batch of n
    replays the smallest size >= n (the rows past n compute on stale input and are ignored)."""
    sizes, size = [], 1
    while size < max_batch:
        if size >= min_batch:
            sizes.append(size)
        size *= 2
    return sizes + [max_batch]


@dataclass(eq=False)
class _SlotState:
    stream_index: int
    event: Any
    execution: SlotExecution
    host_in: dict[str, np.ndarray]  # pinned: CPU-preprocessed rows (and inputs other than the image)
    device_in: dict[str, Any]  # DeviceBuffer per input
    device_out: dict[str, Any]  # DeviceBuffer per output (what the executor writes)
    host_out: dict[str, np.ndarray]  # pinned: what wait() returns (the decoded rows with device decoding)
    decoded: Any = None  # DeviceBuffer of the decoded rows
    # GPU preprocessing: [job table | BGR frames packed back to back], pinned, and its device twin.
    staging_host: np.ndarray | None = None
    staging_device: Any = None
    table: Any = None  # ctypes array of Job over the head of staging_host
    rows: int = 0  # rows staged for the next submit
    used: int = 0  # bytes of the staging area in use (table included)
    host_end: int = 0  # end of what the bulk copy moves (table and frames copied into staging_host)
    pinned_copies: list = field(default_factory=list)  # (row, offset, PinnedImage): sent from where they were decoded
    device_waits: list = field(default_factory=list)  # events of staged NVDEC frames (DeviceFrame.ready) the stream waits for
    graphs: dict[int, CapturedBatch] = field(default_factory=dict)  # batch size -> captured batch, ascending


class DeviceRuntime:
    """An :class:`~daemon.backends.base.InferenceBackend` on a GPU, the model run by ``executor``.

    ``cuda`` is the CUDA layer (:mod:`daemon.cuda`, or a test double). The NVRTC kernels (preprocessing,
    decoding) are compiled only when :meth:`configure` takes that work."""

    def __init__(self, executor: Executor, *, streams: int, device: int = 0, cuda_graphs: bool = True, cuda: Any = None,
                 frame_transfer: str = "copies", hold_gil: bool = False):
        """``frame_transfer``: how frames decoded into pinned memory reach the preprocessing kernel —
        ``copies`` (one asynchronous copy each), ``batched`` (all of a batch in one
        ``cudaMemcpyBatchAsync``; ``copies`` where CUDA is older than 12.8) or ``mapped`` (no copy: the
        kernel reads them in place through unified addressing, as on Jetson's shared memory).
        ``hold_gil``: a batch's enqueues keep Python's GIL (:mod:`daemon.cuda_enqueue`), so the batcher
        does not queue behind every other thread once per call."""
        if frame_transfer not in FRAME_TRANSFERS:
            raise BackendError(f"frame_transfer {frame_transfer!r}: expected one of {', '.join(FRAME_TRANSFERS)}")
        if cuda is None:
            from .. import cuda as cuda_layer

            cuda = cuda_layer
        self._cuda = cuda
        self._executor = executor
        self._device = device
        self._bound = threading.local()
        self._closed = False
        x = executor.info
        self._min_run = x.min_batch
        self._use_graphs = cuda_graphs and x.cuda_graphs
        self._bind_device()
        if frame_transfer == "batched" and not cuda.memcpy_batch_supported():
            frame_transfer = "copies"
        self._frame_transfer = frame_transfer
        self._streams = [cuda.Stream(hold_gil=hold_gil) for _ in range(streams)]
        self._locks = [threading.Lock() for _ in range(streams)]
        self._slots: list[_SlotState] = []
        self._extra: list[Any] = []  # pinned and device buffers of the slots: freed at close
        self._preprocessor = None
        self._job = None
        self._frame_bytes = 0
        self._table_bytes = 0
        self._decoder = None
        self._decoded_shape: tuple[int, ...] | None = None
        self._image_input = _image_input(x.inputs)
        self.info = BackendInfo(
            name=x.name,
            version=x.version,
            device=x.device,
            inputs=x.inputs,
            outputs=x.outputs,
            max_batch=x.max_batch,
            details={"streams": streams, "artifact": None, **x.details, "cuda_graphs": self._use_graphs, "frame_transfer": frame_transfer,
                     "enqueues": "hold the GIL" if all(s.hold_gil for s in self._streams) else "release the GIL"},
            capabilities=Capabilities(
                gpu_preprocessing=self._image_input is not None,
                device_frames=self._image_input is not None,
                device_decoding=len(x.outputs) == 1,
                cuda_graphs=x.cuda_graphs,
            ),
        )

    # -- configuration (before slots) ----------------------------------------------------------------
    def configure(self, work: DeviceWork) -> DeviceWork:
        if self._slots:
            raise BackendError("configure() must come before the first slot")
        taken = DeviceWork(
            preprocessing=work.preprocessing if self.info.capabilities.gpu_preprocessing else None,
            decoding=work.decoding if self.info.capabilities.device_decoding else None,
        )
        if taken.preprocessing is not None:
            from .preprocess import GpuPreprocessor, Job

            spec = self.info.inputs[self._image_input]
            self._preprocessor = GpuPreprocessor(taken.preprocessing.normalizer, taken.preprocessing.pad_grey, spec.dtype)
            self._job = Job  # the job-table row type, resolved once (stage runs per frame)
            self._frame_bytes = int(taken.preprocessing.max_frame_bytes)
        outputs = self.info.outputs
        details = dict(self.info.details)
        if taken.decoding is not None:
            from .decode import DetectionDecoder

            spec = outputs[0]
            self._decoder = DetectionDecoder(taken.decoding.layout, spec.shape, taken.decoding.candidates, spec.dtype)
            self._decoded_shape = tuple(self._decoder.output_shape(-1))
            outputs = (TensorSpec(spec.name, np.dtype(np.float32), self._decoded_shape),)
            details["device_decoding"] = list(self._decoded_shape)
        self.info = replace(self.info, outputs=outputs, details=details, work=taken)
        return taken

    # -- slots -----------------------------------------------------------------------------------------
    def _bind_device(self) -> None:
        """Make this runtime's GPU current on the calling thread (once per thread: it is per thread)."""
        if getattr(self._bound, "device", None) != self._device:
            self._cuda.set_device(self._device)
            self._bound.device = self._device

    def _pinned(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        buffer = self._cuda.PinnedBuffer(max(1, math.prod(shape) * np.dtype(dtype).itemsize))
        self._extra.append(buffer)
        array = buffer.array(dtype, shape)
        array.fill(0)
        return array

    def _device_buffer(self, nbytes: int) -> Any:
        buffer = self._cuda.DeviceBuffer(max(1, nbytes))
        self._extra.append(buffer)
        return buffer

    def create_slot(self, index: int) -> Slot:
        """One slot's buffers; ``index`` < 0 is a warm-up slot (no staging area, no graphs)."""
        if self._closed:
            raise BackendError(f"the {self.info.name} backend is closed")
        self._bind_device()
        cuda, batch, x = self._cuda, self.info.max_batch, self._executor.info
        stream_index = index % len(self._streams)
        host_in, device_in, device_out, host_out = {}, {}, {}, {}
        for spec in x.inputs:
            shape = spec.with_batch(batch)
            if any(d < 0 for d in shape):
                raise BackendError(f"input {spec.name!r} has dynamic dimensions {list(spec.shape)}; set model.input_size")
            host_in[spec.name] = self._pinned(spec.dtype, shape)
            device_in[spec.name] = self._device_buffer(host_in[spec.name].nbytes)
        for spec in x.outputs:
            shape = spec.with_batch(batch)
            if any(d < 0 for d in shape):
                raise BackendError(f"output {spec.name!r} has a data-dependent shape {list(spec.shape)}: not supported")
            device_out[spec.name] = self._device_buffer(math.prod(shape) * np.dtype(spec.dtype).itemsize)
            if self._decoder is None:
                host_out[spec.name] = self._pinned(spec.dtype, shape)
        decoded = None
        if self._decoder is not None:
            shape = (batch, *self._decoded_shape[1:])
            host_out[x.outputs[0].name] = self._pinned(np.float32, shape)
            decoded = self._device_buffer(host_out[x.outputs[0].name].nbytes)
        addresses = {name: buffer.ptr for name, buffer in (*device_in.items(), *device_out.items())}
        execution = self._executor.bind(stream_index, self._streams[stream_index], addresses)
        event = cuda.Event()
        self._extra.append(event)
        state = _SlotState(stream_index, event, execution, host_in, device_in, device_out, host_out, decoded)
        if self._preprocessor is not None and index >= 0:
            self._table_bytes = _align(ctypes.sizeof(self._job) * batch)
            state.staging_host = self._pinned(np.uint8, (self._table_bytes + batch * _align(self._frame_bytes),))
            state.staging_device = self._device_buffer(state.staging_host.nbytes)
            state.table = (self._job * batch).from_address(state.staging_host.ctypes.data)
        if self._use_graphs and index >= 0:
            self._capture(state)
        self._slots.append(state)
        return Slot(index=index, inputs=host_in, outputs=host_out, state=state)

    def _capture(self, state: _SlotState) -> None:
        """This slot's graphs, one per batch size; if the executor cannot capture, every slot runs eagerly
        (logged once)."""
        try:
            for size in graph_batch_sizes(self._min_run, self.info.max_batch):
                state.graphs[size] = state.execution.capture(size)
        except Exception as exc:
            for graph in state.graphs.values():
                graph.close()
            state.graphs.clear()
            self._drop_graphs()
            self._use_graphs = False
            self.info = replace(self.info, details={**self.info.details, "cuda_graphs": False})
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s: CUDA graph capture failed (%s); running the model with plain enqueues", self.info.name, reason)

    def _drop_graphs(self) -> None:
        for slot in self._slots:
            for graph in slot.graphs.values():
                graph.close()
            slot.graphs.clear()

    # -- staging ----------------------------------------------------------------------------------------
    def stage(self, slot: Slot, row: int, image: Any, pipeline: Any) -> Any:
        if self._preprocessor is None:
            if isinstance(image, DeviceFrame):
                raise BackendError("NVDEC frames need GPU preprocessing (engine.preprocess = 'gpu' or 'auto')")
            return pipeline.preprocess(image, slot.inputs[pipeline.input_name][row])
        state: _SlotState = slot.state
        if state.staging_host is None:
            raise BackendError("a warm-up slot stages no frames")
        return stage_frame(state, row, image, pipeline, self._job, self._table_bytes, self._frame_bytes)

    # -- inference --------------------------------------------------------------------------------------
    def submit(self, slot: Slot, batch_size: int) -> None:
        if self._closed:
            raise BackendError(f"the {self.info.name} backend is closed")
        if not 1 <= batch_size <= self.info.max_batch:
            raise BackendError(f"batch of {batch_size} frames; this engine takes 1..{self.info.max_batch}")
        self._bind_device()
        state: _SlotState = slot.state
        stream = self._streams[state.stream_index]
        with self._locks[state.stream_index]:  # slots of one stream share its per-stream executor state
            self._copy_inputs(state, stream, batch_size)
            self._preprocess(state, stream, batch_size)
            self._run_model(state, batch_size)
            self._enqueue_outputs(state, stream, batch_size)
            state.event.record(stream)
        slot.batch_size = batch_size

    def phase_times(self, slot: Slot, batch_size: int) -> dict[str, float]:
        """One batch as :meth:`submit` runs it (stage the frames first), with an event between its steps,
        on an otherwise idle stream: milliseconds of GPU time per step (``copies``, ``preprocessing``,
        ``model``, ``outputs``: decoding and the copy back). For benchmarks, which ask what a pipeline's
        device work costs beside the model alone; it synchronizes, so it is not on the serving path."""
        self._bind_device()
        cuda, state = self._cuda, slot.state
        stream = self._streams[state.stream_index]
        steps = (
            ("copies", lambda: self._copy_inputs(state, stream, batch_size)),
            ("preprocessing", lambda: self._preprocess(state, stream, batch_size)),
            ("model", lambda: self._run_model(state, batch_size)),
            ("outputs", lambda: self._enqueue_outputs(state, stream, batch_size)),
        )
        events = [cuda.Event(timing=True) for _ in range(len(steps) + 1)]
        try:
            with self._locks[state.stream_index]:
                events[0].record(stream)
                for (_, step), event in zip(steps, events[1:]):
                    step()
                    event.record(stream)
            events[-1].synchronize()
            slot.batch_size = batch_size
            return {name: events[i].elapsed_ms(events[i + 1]) for i, (name, _) in enumerate(steps)}
        finally:
            for event in events:
                event.close()

    def run_engine(self, slot: Slot, batch_size: int) -> None:
        """The model alone on whatever the slot's device input holds: no copies, no preprocessing, no
        decoding, the same graphs or enqueues as :meth:`submit` (the benchmarks' engine-only ceiling);
        :meth:`wait` waits for it."""
        self._bind_device()
        state: _SlotState = slot.state
        with self._locks[state.stream_index]:
            self._run_model(state, batch_size)
            state.event.record(self._streams[state.stream_index])
        slot.batch_size = batch_size

    def _run_model(self, state: _SlotState, batch_size: int) -> None:
        """The model on the slot's stream: the smallest captured graph that holds the batch (padded to the
        engine's smallest batch), or a plain enqueue."""
        run = max(batch_size, self._min_run)
        graph = self._graph_for(state, run)
        if graph is not None:
            graph.replay()
        else:
            state.execution.enqueue(run)

    def _copy_inputs(self, state: _SlotState, stream: Any, batch_size: int) -> None:
        """The batch's host-to-device copies: with GPU preprocessing, the job table and the frames packed
        behind it in one copy, then each frame decoded into pinned memory straight from where it is
        (after the bulk copy, which may span their places); CPU-preprocessed inputs otherwise."""
        cuda = self._cuda
        image = self.info.inputs[self._image_input].name if self._image_input is not None else None
        on_device = self._preprocessor is not None
        if on_device and state.rows:
            if state.rows < batch_size:
                raise BackendError(f"{state.rows} frames staged for a batch of {batch_size}")
            pinned = state.pinned_copies
            if pinned and self._frame_transfer == "mapped":  # the kernel reads each frame where it was decoded
                for row, _, frame in pinned:
                    state.table[row].src = frame.ctypes.data
                pinned = ()
            cuda.memcpy_htod_async(state.staging_device.ptr, state.staging_host[: state.host_end], stream)
            if pinned and self._frame_transfer == "batched":
                base = state.staging_device.ptr
                cuda.memcpy_htod_batch_async([base + offset for _, offset, _ in pinned], [frame.ctypes.data for _, _, frame in pinned],
                                             [frame.nbytes for _, _, frame in pinned], stream)
            else:
                for _, offset, frame in pinned:
                    cuda.memcpy_htod_async(state.staging_device.ptr + offset, frame, stream)
            state.pinned_copies.clear()
        for name, host in state.host_in.items():
            if name == image and on_device:
                continue  # written by the kernel (a warm-up batch leaves whatever the buffer holds)
            cuda.memcpy_htod_async(state.device_in[name].ptr, host[:batch_size], stream)

    def _preprocess(self, state: _SlotState, stream: Any, batch_size: int) -> None:
        """One launch that letterboxes every staged row into the model's input (GPU preprocessing), after
        the copies of the NVDEC frames among them (their readers do not wait for those: the GPU does)."""
        if self._preprocessor is None or not state.rows:
            return
        for event in state.device_waits:
            stream.wait_event(event)
        state.device_waits.clear()
        spec = self.info.inputs[self._image_input]
        height, width = spec.shape[2:4]
        self._preprocessor.batch(stream, state.staging_device.ptr, batch_size, state.device_in[spec.name].ptr, width, height)
        state.rows = 0

    def _enqueue_outputs(self, state: _SlotState, stream: Any, batch_size: int) -> None:
        """Decoding on the device and the copy of what is left, or the copy of the raw outputs."""
        cuda = self._cuda
        if self._decoder is not None:
            name = self.info.outputs[0].name
            self._decoder.launch(stream, state.device_out[name].ptr, state.decoded.ptr, batch_size)
            cuda.memcpy_dtoh_async(state.host_out[name][:batch_size], state.decoded.ptr, stream)
        else:
            for name, host in state.host_out.items():
                cuda.memcpy_dtoh_async(host[:batch_size], state.device_out[name].ptr, stream)

    @staticmethod
    def _graph_for(state: _SlotState, batch: int) -> CapturedBatch | None:
        for size, graph in state.graphs.items():  # ascending
            if size >= batch:
                return graph
        return None

    def wait(self, slot: Slot, timeout: float | None = None) -> dict[str, np.ndarray]:
        state: _SlotState = slot.state
        if timeout is None:
            state.event.synchronize()  # blocking sync: the thread sleeps until the GPU signals
        else:
            _wait_until(state.event, timeout, self.info.name)
        n = slot.batch_size
        return {name: host[:n] for name, host in state.host_out.items()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[Exception] = []
        for stream in self._streams:  # nothing may still use the buffers about to be freed
            _attempt(stream.synchronize, errors)
        for slot in self._slots:
            for graph in slot.graphs.values():
                _attempt(graph.close, errors)
        self._slots.clear()
        _attempt(self._executor.close, errors)
        for resource in reversed(self._extra):
            _attempt(resource.close, errors)
        self._extra.clear()
        for stream in reversed(self._streams):
            _attempt(stream.close, errors)
        self._streams.clear()
        if errors:
            log.warning("closing the %s backend: %s", self.info.name, "; ".join(str(e) for e in errors))


def stage_frame(state: _SlotState, row: int, image: Any, pipeline: Any, job: type, table_bytes: int, frame_bytes: int) -> Any:
    """The host side of staging one frame for GPU preprocessing (no CUDA call): its row of the job table,
    and either a pinned frame noted for its own copy or a copy into the staging area. Shared by
    :meth:`DeviceRuntime.stage` and the host-path benchmark (``daemon.bench.host``), which measures this
    work without a GPU. ``state``: the slot's staging fields (``staging_host``, ``staging_device.ptr``,
    ``table``, ``rows``, ``used``, ``host_end``, ``pinned_copies``); returns the pipeline's metadata.
    This runs per frame on the batcher thread, which shares the GIL with the rest of the host path:
    host frames take the ndarray branch first (no ABC check) and their job row is copied from a
    per-geometry template (:func:`_bgr_template`) instead of being built field by field."""
    if row == 0:
        state.rows, state.used, state.host_end = 0, table_bytes, table_bytes
        state.pinned_copies.clear()
        state.device_waits.clear()
    if row != state.rows:
        raise BackendError(f"rows must be staged in order (got {row}, expected {state.rows})")
    shape = image.shape
    meta, geometry = pipeline.plan(shape)
    if not isinstance(image, np.ndarray) and isinstance(image, DeviceFrame):  # NVDEC: read where it was decoded
        state.table[row] = job.nv12(image.y_ptr, image.uv_ptr, image.width, image.height, image.pitch, image.height >= 720, geometry)
        if image.ready is not None:
            state.device_waits.append(image.ready)
    else:
        offset, nbytes = state.used, image.nbytes
        if offset + nbytes > state.staging_host.nbytes or nbytes > frame_bytes:
            raise BackendError(f"frame of {shape[1]}x{shape[0]} does not fit the GPU staging area; raise engine.max_frame_size")
        if isinstance(image, PinnedImage) and image.flags.c_contiguous:  # decoded into pinned memory: no CPU copy
            state.pinned_copies.append((row, offset, image))
        else:
            np.copyto(state.staging_host[offset : offset + nbytes].reshape(shape), image)  # releases the GIL
            state.host_end = offset + nbytes
        table = state.table
        table[row] = _bgr_template(job, shape[1], shape[0], geometry)
        table[row].src = state.staging_device.ptr + offset
        state.used = offset + _align(nbytes)
    state.rows = row + 1
    return meta


_templates: dict[tuple[int, int, int, type], tuple[Any, Any]] = {}  # (id(geometry), w, h, Job) -> (geometry, row)


def _bgr_template(job: type, width: int, height: int, geometry: Any) -> Any:
    """The job row of a ``width`` x ``height`` BGR frame with ``geometry``, its source address left 0
    (a camera keeps its size, and ``pipeline.plan`` its geometry object, so this is a dictionary hit).
    Keyed by the geometry's identity: the entry holds the geometry, so no other live object can have its
    id, and an entry whose geometry is another object is rebuilt."""
    key = (id(geometry), width, height, job)
    entry = _templates.get(key)
    if entry is None or entry[0] is not geometry:
        if len(_templates) >= 256:
            _templates.clear()
        entry = _templates[key] = (geometry, job.bgr(0, width, height, width * 3, geometry))
    return entry[1]


def _attempt(action: Any, errors: list[Exception]) -> None:
    try:
        action()
    except Exception as exc:
        errors.append(exc)


def _image_input(inputs: tuple[TensorSpec, ...]) -> int | None:
    """The input GPU preprocessing can write: the only input, 4-D NCHW with 3 channels, fp32 or fp16."""
    if len(inputs) != 1:
        return None
    spec = inputs[0]
    if len(spec.shape) != 4 or spec.shape[1] != 3 or np.dtype(spec.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        return None
    return 0


def _wait_until(event: Any, timeout: float, name: str) -> None:
    """CUDA events have no timed wait: poll (with growing sleeps) only when a timeout is asked for, which
    the warm-up does; the hot path waits without one."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not event.query():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendError(f"{name} inference did not finish within {timeout}s")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.01)
