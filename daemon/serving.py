"""What serves, as one unit: a backend, the pipeline built for it and the model fields of every message.

One factory (:func:`build_unit`) makes it for every path that brings a backend into service: the start,
a background-built engine replacing the ONNX Runtime fallback, a reload that changes the model, and the
GPU benchmark. Each path therefore gets the same device work (GPU preprocessing, device decoding) for the
same backend — an engine built in the background is configured exactly as one loaded at start — and the
scheduler swaps the three together between two batches.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .backends.base import DeviceWork, GpuPreprocessing, InferenceBackend
from .config import EngineConfig, ModelConfig
from .engine.fingerprint import file_sha256
from .errors import UserError

__all__ = ["ServingUnit", "build_unit", "configure_device_work", "model_id"]

log = logging.getLogger("trtstream.serving")


@dataclass(frozen=True)
class ServingUnit:
    backend: InferenceBackend
    pipeline: Any  # pipelines.base.Pipeline
    model_info: dict[str, Any]  # the "model" fields of result messages: id, sha256, pipeline


def model_id(path: Path, explicit: str | None) -> tuple[str, str]:
    """(model id shown in messages, full sha256 of the model file)."""
    sha = file_sha256(path)
    return explicit or f"{path.stem}@{sha[:12]}", sha


def _metadata_names(details: dict[str, Any]) -> list[str] | None:
    """Class names from Ultralytics-style ONNX metadata (``names: {0: 'person', ...}``), if present."""
    raw = details.get("metadata", {}).get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def configure_device_work(backend: InferenceBackend, pipeline: Any, engine: EngineConfig) -> DeviceWork:
    """Move work to the GPU where the backend can take it (before slots are created): per
    ``engine.preprocess``, the preprocessing (uint8 frames to the device, one NVRTC kernel launch per batch
    writes the input), and the pipeline's output decoding (a few KB back per frame, already decoded)."""
    capabilities = backend.info.capabilities
    preprocessing = None
    if engine.preprocess in ("gpu", "auto") and capabilities.gpu_preprocessing:
        width, height = engine.max_frame_size
        preprocessing = GpuPreprocessing(pipeline.normalizer, pipeline.pad_grey, width * height * 3)
    elif engine.preprocess == "gpu":
        log.warning("engine.preprocess = 'gpu' but the %s backend cannot; preprocessing on the CPU", backend.info.name)
    taken = backend.configure(DeviceWork(preprocessing, pipeline.device_decoding))
    if taken.preprocessing is not None:
        log.info("preprocessing on the GPU (frames up to %dx%d)", *engine.max_frame_size)
    return taken


def build_unit(model: ModelConfig, engine: EngineConfig, backend: InferenceBackend, nvdec_sources: Sequence[str] = ()) -> ServingUnit:
    """The pipeline for ``backend`` (from its tensor specs), the device work configured, the model fields.
    ``nvdec_sources``: ids of sources decoded by NVDEC, which need a backend that takes device frames.
    Raises UserError (or BackendError); the caller still owns ``backend`` then."""
    from pipelines import create_pipeline

    model_name, model_sha = model_id(model.path, model.id)
    pipeline = create_pipeline(model, backend.info, _metadata_names(backend.info.details))
    configure_device_work(backend, pipeline, engine)
    info = backend.info
    if nvdec_sources and not info.takes_device_frames:
        raise UserError(
            f"sources {list(nvdec_sources)}: decoder = 'nvdec' needs a GPU backend with GPU preprocessing "
            f"(engine.backend = 'torch' or 'tensorrt', engine.preprocess = 'gpu'); serving with {info.name}"
        )
    return ServingUnit(backend, pipeline, {"id": model_name, "sha256": model_sha, "pipeline": pipeline.kind})
