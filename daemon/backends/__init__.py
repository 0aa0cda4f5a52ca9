"""Inference backends behind one protocol (:class:`InferenceBackend`), chosen by ``engine.backend``."""

from __future__ import annotations

import importlib.util
import logging
import os

from ..config import EngineConfig, ModelConfig
from ..errors import BackendError
from .base import BackendInfo, Capabilities, DeviceWork, InferenceBackend, Slot, TensorSpec

__all__ = ["BackendInfo", "Capabilities", "DeviceWork", "InferenceBackend", "Slot", "TensorSpec", "create_backend", "resolve_backend_name", "available_backends"]

log = logging.getLogger("trtstream.backends")

AUTO_ORDER = ("tensorrt", "torch", "onnxruntime")

# TorchInductor's cache directories as the user's environment set them, read when the daemon first imports
# its backends, before torch can: torch writes its default (under /tmp) into the environment the first time
# it looks. engine.torch.compile caches in the engine cache unless the user chose otherwise.
USER_COMPILER_CACHE_DIRS = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}


def _tensorrt_usable() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    from ..cuda import cuda_available

    return cuda_available()


def _torch_usable() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None:
        return False
    from ..cuda import bindings_fit_driver
    from .torch import torch_usable

    # The torch backend runs on trtstream's own CUDA streams (cuda-bindings), not only torch's.
    return bindings_fit_driver() and torch_usable()


def available_backends() -> dict[str, bool]:
    """Which backends this build can use on this machine."""
    return {
        "tensorrt": _tensorrt_usable(),
        "torch": _torch_usable(),
        "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
    }


def resolve_backend_name(requested: str) -> str:
    """'auto' -> the first usable backend of AUTO_ORDER; an explicit name must be usable here."""
    usable = available_backends()
    if requested != "auto":
        if not usable.get(requested, False):
            if requested in ("tensorrt", "torch"):
                from ..cuda import cuda_mismatch

                mismatch = cuda_mismatch()
                if mismatch is not None:
                    raise BackendError(f"engine.backend = {requested!r}: {mismatch}")
            hints = {
                "tensorrt": "TensorRT and a CUDA GPU (pip install tensorrt 'trtstream[gpu-cu12]' or '[gpu-cu13]', the driver's CUDA major)",
                "torch": "PyTorch with CUDA and onnx2torch (pip install torch onnx2torch)",
                "onnxruntime": "pip install onnxruntime",
            }
            raise BackendError(f"engine.backend = {requested!r} needs {hints.get(requested, 'an unknown backend')}")
        return requested
    for name in AUTO_ORDER:
        if usable[name]:
            return name
    raise BackendError("engine.backend: no usable inference backend on this machine (pip install onnxruntime)")


def create_backend(model: ModelConfig, engine: EngineConfig) -> InferenceBackend:
    """A backend on the plain model, without the engine cache (``engine.use_cache = false``)."""
    name = resolve_backend_name(engine.backend)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model.path, engine.max_batch, engine.streams_for(name), engine.onnxruntime)
    if name == "torch":
        from ..engine.cache import default_cache_dir
        from .torch import torch_backend

        return torch_backend(
            model.path, engine.max_batch, engine.streams_for(name), half=engine.torch.half, device=engine.device,
            cuda_graphs=engine.cuda_graphs, channels_last=engine.torch.channels_last, frame_transfer=engine.frame_transfer,
            hold_gil=engine.hold_gil_for_enqueues, compile_model=engine.torch.compile,
            compile_cache=(engine.cache_dir or default_cache_dir()) / "inductor",
        )  # fmt: skip
    if name == "tensorrt":
        import tempfile
        from pathlib import Path

        from ..engine.builders import create_builder

        builder = create_builder(model, engine, name)
        # The loaded engine lives in memory: its plan file is scratch, removed once loaded.
        with tempfile.TemporaryDirectory(prefix="trtstream-uncached-") as scratch:
            plan = Path(scratch) / f"{model.path.stem}.engine"
            builder.build(model.path, plan, None, lambda fraction, message: None)
            return builder.load(plan)
    raise BackendError(f"engine.backend: unknown backend {name!r}")  # pragma: no cover
