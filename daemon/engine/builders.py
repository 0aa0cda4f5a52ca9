"""Artifact builders per backend, and the ONNX Runtime one.

ONNX Runtime's artifact is its optimised model (graph fusions and layout changes done once, saved with
``SessionOptions.optimized_model_filepath``), loaded later with optimisation off. It goes through the
same cache as TensorRT plans, so the cache logic runs, and is tested, on every machine.
"""

from __future__ import annotations

import errno
import platform
from pathlib import Path
from typing import Any

from ..backends import resolve_backend_name
from ..backends.base import InferenceBackend
from ..config import EngineConfig, ModelConfig
from ..errors import BackendError
from ..fsutil import no_space_left
from .artifact import ArtifactBuilder, ArtifactInvalid, Progress

__all__ = ["OnnxRuntimeBuilder", "create_builder", "cpu_features"]


def cpu_features() -> list[str]:
    """The instruction-set flags that change which kernels an optimised CPU graph may use."""
    wanted = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma", "f16c", "asimd", "sve", "neon")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return sorted(flag for flag in wanted if flag in flags)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 1


class OnnxRuntimeBuilder:
    backend = "onnxruntime"
    artifact_suffix = ".onnx"
    uses_timing_cache = False

    def __init__(self, model: ModelConfig, engine: EngineConfig):
        self.model = model
        self.engine = engine

    def fingerprint(self) -> dict[str, Any]:
        import onnxruntime

        options = self.engine.onnxruntime
        return {
            "backend_version": onnxruntime.__version__,
            "device": {"kind": "cpu", "machine": platform.machine(), "cpu_features": cpu_features()},
            "options": {"graph_optimization": options.graph_optimization},
        }

    def build(self, model_path: Path, output_path: Path, timing_cache_path: Path | None, progress: Progress) -> None:
        import onnxruntime as ort

        from ..backends.onnxruntime import _OPT_LEVELS

        progress(0.0, "optimising the ONNX graph")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[self.engine.onnxruntime.graph_optimization])
        session_options.optimized_model_filepath = str(output_path)
        session_options.log_severity_level = 3  # its "hardware specific" warning is why cpu_features is fingerprinted
        try:
            ort.InferenceSession(str(model_path), session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            # ONNX Runtime loses the errno of a failed write: a full disk reads "INVALID_PROTOBUF : Protobuf
            # serialization failed". Ask the filesystem (its partial output still there) whether an artifact
            # of about the model's size fits; if not, that is why, and the cache takes its no-space path.
            if no_space_left(output_path.parent, _size(model_path)):
                raise OSError(errno.ENOSPC, f"no space left on {output_path.parent}", str(output_path.parent)) from None
            raise BackendError(f"{model_path}: ONNX Runtime cannot optimise the model: {str(exc).splitlines()[0]}") from None
        progress(1.0, "optimised")

    def child_recipe(self) -> tuple[Any, tuple]:
        return create_builder, (self.model, self.engine, self.backend)

    def load(self, artifact_path: Path) -> InferenceBackend:
        from ..backends.onnxruntime import OnnxRuntimeBackend

        options = self.engine.onnxruntime.model_copy(update={"graph_optimization": "disable"})
        try:
            backend = OnnxRuntimeBackend(artifact_path, self.engine.max_batch, self.engine.streams_for("onnxruntime"), options)
        except BackendError as exc:
            raise ArtifactInvalid(str(exc)) from None
        backend.info.details["artifact"] = artifact_path.stem.rsplit("-", 1)[-1]
        return backend


def create_builder(model: ModelConfig, engine: EngineConfig, backend_name: str | None = None) -> ArtifactBuilder:
    name = backend_name or resolve_backend_name(engine.backend)
    if name == "onnxruntime":
        return OnnxRuntimeBuilder(model, engine)
    if name == "tensorrt":
        from ..backends.tensorrt import TensorRTBuilder

        return TensorRTBuilder(model, engine)
    raise BackendError(f"engine.backend: {name!r} has no engine cache support")
