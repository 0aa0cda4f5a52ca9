"""Model families: pre- and post-processing for each kind of model (``model.pipeline`` in the config)."""

from __future__ import annotations

from daemon.backends.base import BackendInfo, TensorSpec
from daemon.config import ModelConfig
from daemon.errors import ModelConfigError

from . import classification, detection
from .base import Pipeline, load_labels
from .classification import ClassificationPipeline
from .detection import DetectionPipeline

__all__ = ["Pipeline", "create_pipeline", "load_labels", "DetectionPipeline", "ClassificationPipeline"]

# What each pipeline can decode: checked before its constructor runs, so the error names model.pipeline.
_OUTPUT_CHECKS = {"detection": detection.check_output_shape, "classification": classification.check_output_shape}


def create_pipeline(model: ModelConfig, backend: BackendInfo, metadata_names: list[str] | None = None) -> Pipeline:
    """Build the model's pipeline from its config and the backend's tensor specs; ModelConfigError (naming
    the setting to change) if they disagree. ``check-config`` calls it on the tensors read from the model
    without running it, so a config it accepts is one this accepts at run time."""
    image_input, input_size = _image_input(model, backend.inputs)
    output = _decoded_output(model, backend.outputs)
    try:
        labels = load_labels(model.labels, None, metadata_names)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError("model.labels", f"cannot read the label file: {exc}") from None
    try:
        if model.pipeline == "detection":
            return DetectionPipeline(
                image_input.name, input_size, output.name, output.shape, labels, model.preprocess, model.detection
            )
        return ClassificationPipeline(image_input.name, input_size, output.name, labels, model.preprocess, model.classification)
    except ValueError as exc:  # the output fits the pipeline (checked above), so what is left is the labels' count
        raise ModelConfigError("model.labels", str(exc), model=model.path) from None


def _image_input(model: ModelConfig, inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, tuple[int, int]]:
    """The one [N, 3, H, W] input and the (width, height) frames are resized to."""
    if len(inputs) != 1:
        raise ModelConfigError(
            "model.path", f"model has {len(inputs)} inputs; trtstream pipelines take exactly one image input", model=model.path
        )
    image_input = inputs[0]
    if len(image_input.shape) != 4 or image_input.shape[1] not in (3, -1):
        raise ModelConfigError(
            "model.path", f"input {image_input.name!r} has shape {list(image_input.shape)}; expected [N, 3, H, W]", model=model.path
        )
    static_size = (image_input.shape[3], image_input.shape[2])
    input_size = model.input_size or static_size
    if min(input_size) <= 0:
        raise ModelConfigError("model.input_size", "input size is dynamic; set model.input_size = [width, height]", model=model.path)
    if model.input_size and min(static_size) > 0 and tuple(model.input_size) != static_size:
        raise ModelConfigError("model.input_size", f"{list(model.input_size)} but the model's input is fixed at {list(static_size)}")
    return image_input, input_size


def _decoded_output(model: ModelConfig, outputs: tuple[TensorSpec, ...]) -> TensorSpec:
    """The output the pipeline decodes (``model.output`` or the first), checked against ``model.pipeline``."""
    by_name = {o.name: o for o in outputs}
    if model.output is not None and model.output not in by_name:
        raise ModelConfigError("model.output", f"no output named {model.output!r}; the model has {sorted(by_name)}")
    output = by_name[model.output] if model.output else outputs[0]
    try:
        _OUTPUT_CHECKS[model.pipeline](output.shape)
    except ValueError as exc:
        raise ModelConfigError("model.pipeline", f"output {output.name!r}: {exc}", model=model.path) from None
    return output
