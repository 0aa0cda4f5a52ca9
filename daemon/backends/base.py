"""The engine interface every inference backend implements (ONNX Runtime, TensorRT, torch).

The scheduler owns a fixed pool of :class:`Slot` objects, each created once by the backend at start:
host input arrays sized for ``max_batch`` (page-locked on a GPU backend), output arrays, and whatever
the backend needs to run asynchronously (a CUDA stream, events, an execution context). A batch is:
the scheduler hands each frame to ``stage(slot, row, image, pipeline)`` (the backend preprocesses it into
``slot.inputs`` or stages it for the device, whichever it was configured for), calls ``submit(slot, n)``
which returns at once, and later ``wait(slot)`` which returns the first ``n`` rows of every output.
Nothing is allocated per frame or per batch on the hot path.

What a backend can do on the device is declared (:class:`Capabilities` in its info) and what it does is
chosen once, before slots exist (:meth:`InferenceBackend.configure`), so callers never probe for methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..entities import DeviceFrame
from ..errors import BackendError

__all__ = [
    "TensorSpec", "BackendInfo", "Capabilities", "DeviceWork", "GpuPreprocessing", "DeviceDecoding", "Slot",
    "InferenceBackend", "stage_on_host",
]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output tensor. ``shape`` uses -1 for dynamic dimensions; dimension 0 is the batch."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def dynamic_batch(self) -> bool:
        return self.shape[0] == -1

    def with_batch(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape[1:])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": str(np.dtype(self.dtype)), "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class GpuPreprocessing:
    """Preprocessing on the device: uint8 frames (up to ``max_frame_bytes``) in, the input tensor out
    (:mod:`daemon.gpu.preprocess`), with the pipeline's normalisation and padding."""

    normalizer: Any  # pipelines.imageops.Normalizer
    pad_grey: int
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class DeviceDecoding:
    """Detection decoding on the device before the copy back: each image's ``candidates`` best boxes as
    rows ``x1, y1, x2, y2, score, class`` (:mod:`daemon.gpu.decode`); the host thresholds and runs NMS."""

    layout: str  # pipelines.detection.OBJECTNESS or ANCHORS_LAST
    candidates: int


@dataclass(frozen=True, slots=True)
class DeviceWork:
    """Work that can move from the host to the device; ``None`` = stays on the host."""

    preprocessing: GpuPreprocessing | None = None
    decoding: DeviceDecoding | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can take on, declared by the backend (callers read these; they never probe for
    methods): GPU preprocessing, NVDEC frames read in device memory, device decoding, CUDA graphs."""

    gpu_preprocessing: bool = False
    device_frames: bool = False
    device_decoding: bool = False
    cuda_graphs: bool = False


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What serves: shown in heartbeats and logs. ``capabilities``: what it can do; ``work``: what it was
    configured to do on the device (:meth:`InferenceBackend.configure`)."""

    name: str
    version: str
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    details: dict[str, Any] = field(default_factory=dict)
    capabilities: Capabilities = Capabilities()
    work: DeviceWork = DeviceWork()
    # True when wait() returns arrays of the caller's own (ONNX Runtime allocates its outputs per run):
    # the slot is free at once. False: views of the slot's buffers, which its next batch overwrites.
    owns_outputs: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "device": self.device, "max_batch": self.max_batch}

    @property
    def decodes_on_device(self) -> bool:
        return self.work.decoding is not None

    @property
    def preprocesses_on_device(self) -> bool:
        return self.work.preprocessing is not None

    @property
    def takes_device_frames(self) -> bool:
        """Whether NVDEC's device frames can be served: the backend takes them and preprocesses on the GPU."""
        return self.capabilities.device_frames and self.preprocesses_on_device


@dataclass(eq=False)
class Slot:
    """One in-flight batch's buffers. ``inputs`` are written by preprocessing; ``state`` is the backend's."""

    index: int
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    batch_size: int = 0
    state: Any = None


@runtime_checkable
class InferenceBackend(Protocol):
    info: BackendInfo

    def configure(self, work: DeviceWork) -> DeviceWork:
        """Before any slot exists: take on what it can of ``work``; returns what it took (also in
        ``info.work``). A CPU backend takes nothing."""

    def create_slot(self, index: int) -> Slot:
        """Allocate one slot's buffers (called once per slot at start)."""

    def stage(self, slot: Slot, row: int, image: Any, pipeline: Any) -> Any:
        """Put frame ``image`` into batch row ``row`` of ``slot`` (rows in order from 0): preprocessed by
        ``pipeline`` into ``slot.inputs``, or staged for the device; returns the pipeline's metadata
        for postprocessing. Raises for a frame this backend cannot take (BackendError)."""

    def submit(self, slot: Slot, batch_size: int) -> None:
        """Start inference on the first ``batch_size`` rows of ``slot.inputs``; returns without waiting."""

    def wait(self, slot: Slot, timeout: float | None = None) -> dict[str, np.ndarray]:
        """Wait for the submitted batch; returns outputs with ``batch_size`` rows: views of the slot's own
        buffers, valid until the slot is submitted again or the backend closed, unless ``info.owns_outputs``
        (then the caller's). Raises BackendError."""

    def close(self) -> None: ...


def stage_on_host(slot: Slot, row: int, image: Any, pipeline: Any) -> Any:
    """:meth:`InferenceBackend.stage` for a backend that preprocesses on the CPU."""
    if isinstance(image, DeviceFrame):
        raise BackendError("a frame in device memory (NVDEC) needs a GPU backend with GPU preprocessing")
    return pipeline.preprocess(image, slot.inputs[pipeline.input_name][row])
