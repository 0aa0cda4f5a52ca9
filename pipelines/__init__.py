"""Model families: pre- and post-processing for each kind of model (``model.pipeline`` in the config)."""

from __future__ import annotations

from daemon.backends.base import BackendInfo
from daemon.config import ModelConfig
from daemon.errors import UserError

from .base import Pipeline, load_labels
from .classification import ClassificationPipeline
from .detection import DetectionPipeline

__all__ = ["Pipeline", "create_pipeline", "load_labels", "DetectionPipeline", "ClassificationPipeline"]


def create_pipeline(model: ModelConfig, backend: BackendInfo, metadata_names: list[str] | None = None) -> Pipeline:
    """Build the model's pipeline from its config and the backend's tensor specs; UserError if they disagree."""
    if len(backend.inputs) != 1:
        raise UserError(f"{model.path}: model has {len(backend.inputs)} inputs; trtstream pipelines take exactly one image input")
    image_input = backend.inputs[0]
    if len(image_input.shape) != 4 or image_input.shape[1] not in (3, -1):
        raise UserError(f"{model.path}: input {image_input.name!r} has shape {list(image_input.shape)}; expected [N, 3, H, W]")
    static_size = (image_input.shape[3], image_input.shape[2])
    input_size = model.input_size or static_size
    if min(input_size) <= 0:
        raise UserError(f"{model.path}: input size is dynamic; set model.input_size = [width, height]")
    if model.input_size and min(static_size) > 0 and tuple(model.input_size) != static_size:
        raise UserError(f"model.input_size: {list(model.input_size)} but the model's input is fixed at {list(static_size)}")
    outputs = {o.name: o for o in backend.outputs}
    if model.output is not None and model.output not in outputs:
        raise UserError(f"model.output: no output named {model.output!r}; the model has {sorted(outputs)}")
    output = outputs[model.output] if model.output else backend.outputs[0]
    labels = load_labels(model.labels, None, metadata_names)
    try:
        if model.pipeline == "detection":
            return DetectionPipeline(
                image_input.name, input_size, output.name, output.shape, labels, model.preprocess, model.detection
            )
        return ClassificationPipeline(image_input.name, input_size, output.name, labels, model.preprocess, model.classification)
    except ValueError as exc:
        raise UserError(f"{model.path}: {exc}") from None
