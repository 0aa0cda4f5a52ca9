"""The engine interface every inference backend implements (ONNX Runtime, TensorRT, torch).

The scheduler owns a fixed pool of :class:`Slot` objects, each created once by the backend at start:
host input arrays sized for ``max_batch`` (page-locked on a GPU backend), output arrays, and whatever
the backend needs to run asynchronously (a CUDA stream, events, an execution context). A batch is:
the scheduler writes preprocessed frames into ``slot.inputs``, calls ``submit(slot, n)`` which returns
at once, and later ``wait(slot)`` which returns the first ``n`` rows of every output. Nothing is
allocated per frame or per batch on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["TensorSpec", "BackendInfo", "Slot", "InferenceBackend"]


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
class BackendInfo:
    """What serves: shown in heartbeats and logs."""

    name: str
    version: str
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "device": self.device, "max_batch": self.max_batch}


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

    def create_slot(self, index: int) -> Slot:
        """Allocate one slot's buffers (called once per slot at start)."""

    def submit(self, slot: Slot, batch_size: int) -> None:
        """Start inference on the first ``batch_size`` rows of ``slot.inputs``; returns without waiting."""

    def wait(self, slot: Slot, timeout: float | None = None) -> dict[str, np.ndarray]:
        """Wait for the submitted batch; returns outputs with ``batch_size`` rows. Raises BackendError."""

    def close(self) -> None: ...
