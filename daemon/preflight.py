"""What ``trtstream check-config`` checks beyond the schema and ``check_files``: what the sources read and
whether the model fits its pipeline.

These are separate from ``load_checked`` (which ``run``, SIGHUP reloads and the engine commands use) on
purpose. A file source that is missing is not fatal at run time: that source ends with an ``eos``
(``reason = "error"``) and the others carry on, so a daemon must still start without it; but a config
check that says "ok" about it would be wrong. The model check reads the model's tensors, which ``run``
does anyway when the backend loads it, so doing it twice there would only cost start-up time.

Each problem is one line, ``<config file>: <key path>: <what is wrong>``, like every other config error.
"""

from __future__ import annotations

from pathlib import Path

from .backends.base import BackendInfo
from .config import Config, SourceKind
from .errors import BackendError, ModelConfigError
from .redact import mask_url

__all__ = ["preflight", "check_sources", "check_model"]


def preflight(config: Config, origin: str) -> list[str]:
    """Every problem ``check-config`` finds in a config that already validated and whose model and label
    files exist (``load_checked``); empty when the daemon can start with it."""
    return check_sources(config, origin) + check_model(config, origin)


def check_sources(config: Config, origin: str) -> list[str]:
    """Enabled file sources whose file does not exist (or is not a file). Disabled sources are not
    opened, so they are not checked: a disabled source may name a file that is yet to be copied there."""
    problems = []
    for index, source in enumerate(config.sources):
        if source.enabled and source.resolved_kind is SourceKind.FILE:
            problem = _file_problem(source.uri)
            if problem:
                problems.append(f"{origin}: sources[{index}](id={source.id!r}).uri: {problem}")
    return problems


def _file_problem(uri: str) -> str | None:
    """What the reader would fail on at once ("file not found" is its own wording), or None."""
    path = Path(uri)
    if path.is_file():
        return None
    shown = mask_url(uri)  # the string as written, masked: Path() would fold a mistyped "rstp://user:pw@" out of the mask's reach
    return f"not a file but a directory: {shown}" if path.is_dir() else f"file not found: {shown}"


def check_model(config: Config, origin: str) -> list[str]:
    """The model is ONNX that ONNX Runtime can load and its tensors fit ``model`` (one [N, 3, H, W] input,
    an output ``model.pipeline`` can decode, ``input_size``, ``output`` and the label count), decided by
    the same ``create_pipeline`` that ``run`` builds the pipeline with, on the tensors read without
    running the model (:func:`read_io_specs`)."""
    from pipelines import create_pipeline

    from .backends.onnxruntime import read_io_specs

    try:
        inputs, outputs = read_io_specs(config.model.path)
    except BackendError as exc:
        return [f"{origin}: model.path: {exc}"]
    tensors = BackendInfo("check-config", "", "none", inputs, outputs, config.engine.max_batch)
    try:
        create_pipeline(config.model, tensors)
    except ModelConfigError as exc:
        return [f"{origin}: {exc.key}: {exc.detail}"]
    return []
