"""Inference backends behind one protocol (:class:`InferenceBackend`), chosen by ``engine.backend``."""

from __future__ import annotations

import logging

from ..config import EngineConfig, ModelConfig
from ..errors import BackendError
from .base import BackendInfo, InferenceBackend, Slot, TensorSpec

__all__ = ["BackendInfo", "InferenceBackend", "Slot", "TensorSpec", "create_backend", "resolve_backend_name"]

log = logging.getLogger("trtstream.backends")

AUTO_ORDER = ("tensorrt", "torch", "onnxruntime")
IMPLEMENTED = ("onnxruntime",)


def resolve_backend_name(requested: str) -> str:
    """'auto' -> the first backend of AUTO_ORDER that is implemented and usable on this machine."""
    if requested != "auto":
        if requested not in IMPLEMENTED:
            raise BackendError(f"engine.backend: the {requested!r} backend is not available in this build of trtstream")
        return requested
    for name in AUTO_ORDER:
        if name in IMPLEMENTED:
            return name
    raise BackendError("engine.backend: no usable inference backend on this machine")  # pragma: no cover


def create_backend(model: ModelConfig, engine: EngineConfig) -> InferenceBackend:
    name = resolve_backend_name(engine.backend)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend, ort_available

        if not ort_available():
            raise BackendError("engine.backend: onnxruntime is not installed (pip install onnxruntime)")
        return OnnxRuntimeBackend(model.path, engine.max_batch, engine.streams, engine.onnxruntime)
    raise BackendError(f"engine.backend: unknown backend {name!r}")  # pragma: no cover
