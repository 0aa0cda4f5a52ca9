"""Model conversion for TensorRT: TensorFlow SavedModel -> ONNX, and FP32 ONNX -> FP16 ONNX.

Why this exists: TensorRT parses ONNX only (the UFF and Caffe parsers are gone since TensorRT 10), so a
TensorFlow model reaches it through tf2onnx, NVIDIA's recommended route. TensorRT 11 builds strongly typed
networks only: the precision comes from the ONNX itself, so "run it in FP16" means "give it an FP16 ONNX".

Why it is optional: the converters are heavy (TensorFlow alone is ~1 GB installed) and the daemon needs
none of them, so they live in extras ('tf': tensorflow + tf2onnx; 'convert': onnx + onnxconverter-common)
and are imported only when a conversion runs. A missing extra, a missing or unreadable input is one
``UserError`` line naming the path and the fix, never a traceback.

Every output is checked with ONNX Runtime before it is written (it loads and runs; the FP16 model's
output is compared with the FP32 model's), then written atomically (temporary file in the same
directory, fsync, rename): a crash or a failed check never leaves a half-written or broken model where
the daemon would load it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import UserError
from .fsutil import write_atomically

__all__ = ["convert_saved_model", "convert_fp16", "fp16_max_abs_diff", "add_convert_commands", "FP16_TOLERANCE"]

log = logging.getLogger("trtstream.convert")

DEFAULT_OPSET = 17  # TensorRT 10/11 parse it; tf2onnx 1.17 supports up to 18
FP16_TOLERANCE = 0.05  # max |fp16 - fp32| on random input, relative to max |fp32| (or 1 if smaller)
_MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit; larger models need ONNX external data (not handled here)


# ---- shared helpers ---------------------------------------------------------------------------------


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _require(extra: str, purpose: str, *modules: str) -> list:
    """Import ``modules`` or raise a UserError that says which extra to install. Lazy on purpose."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except Exception as exc:  # ImportError, or a broken install (protobuf mismatch, missing .so)
            raise UserError(
                f"{purpose} needs the '{extra}' extra: pip install 'trtstream[{extra}]' "
                f"(cannot import {name}: {_first_line(exc)})"
            ) from None
    return loaded


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the output ONNX file name")
    if not path.parent.is_dir():
        raise UserError(f"{path}: output directory {path.parent} does not exist")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write atomically (see daemon.fsutil); a filesystem error is the user's to fix, so one line."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _serialize(model, path: Path) -> bytes:
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise UserError(f"{path}: the model is over 2 GB, which needs ONNX external data (not supported here)")
    return model.SerializeToString()


_FEED_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions; no ORT log lines
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _random_feed(session, batch: int, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Inputs for ``session`` at ``batch`` in [-1, 1] (a normalised image's range); None if not possible."""
    rng = np.random.default_rng(seed)
    feed = {}
    for node in session.get_inputs():
        dims = list(node.shape)
        if node.type not in _FEED_TYPES or not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None  # a string input or dynamic H/W: no meaningful random input
        shape = (batch, *dims[1:])
        dtype = _FEED_TYPES[node.type]
        if np.issubdtype(dtype, np.floating):
            feed[node.name] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        else:
            feed[node.name] = np.zeros(shape, dtype)
    return feed


# ---- TensorFlow SavedModel -> ONNX ---------------------------------------------------------------


def _serving_signature(tf_proto, src: Path) -> str:
    """'serving_default' when the SavedModel has it, else its only public signature."""
    saved = tf_proto.SavedModel()
    try:
        saved.ParseFromString((src / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise UserError(f"{src}: not a readable TensorFlow SavedModel ({_first_line(exc)})") from None
    names = sorted({k for mg in saved.meta_graphs if "serve" in mg.meta_info_def.tags
                    for k in mg.signature_def if not k.startswith("_")})
    if not names:
        raise UserError(
            f"{src}: the SavedModel has no serving signature; export it with model.export(DIR) (Keras 3) "
            "or tf.saved_model.save(model, DIR, signatures=...)"
        )
    return "serving_default" if "serving_default" in names else names[0]


def _free_batch(graph_def, inputs: list[str]) -> list[str]:
    """Make dimension 0 of every fixed-batch input placeholder dynamic, in place; returns their names.

    (tf2onnx's shape_override cannot do it: TensorFlow's set_shape only ever narrows a shape.) Whether
    the graph then runs at another batch depends on it not having folded the batch into constants.
    """
    freed = []
    nodes = {node.name: node for node in graph_def.node}
    for name in inputs:
        node = nodes.get(name.split(":")[0])
        if node is None or node.op != "Placeholder" or "shape" not in node.attr:
            continue
        shape = node.attr["shape"].shape
        if not shape.unknown_rank and shape.dim and shape.dim[0].size != -1:
            shape.dim[0].size = -1
            freed.append(name)
    return freed


def _name_batch_dims(model) -> None:
    """Call dimension 0 of every input and output 'batch' (tf2onnx names them unk__N)."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def convert_saved_model(saved_model_dir: str | os.PathLike, output_onnx: str | os.PathLike,
                        opset: int = DEFAULT_OPSET) -> Path:
    """Convert a TensorFlow 2 SavedModel's serving signature to ONNX with tf2onnx; returns the output path.

    The batch dimension of the ONNX is dynamic (named 'batch') so TensorRT can build an optimisation
    profile and ONNX Runtime can run any batch size; a SavedModel whose graph bakes in its batch fails
    the batch-2 check with a hint to re-export. Input layout is kept as TensorFlow has it (Keras: NHWC).
    This is what ``python -m tf2onnx.convert --saved-model DIR --opset N`` does, plus those checks.
    """
    src, out = Path(saved_model_dir), Path(output_onnx)
    if not src.is_dir():
        raise UserError(f"{src}: no such directory (expected a TensorFlow SavedModel)")
    if not (src / "saved_model.pb").is_file():
        raise UserError(f"{src}: not a TensorFlow SavedModel (no saved_model.pb in it)")
    _check_output(out)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    tf, saved_model_pb2, tf_loader, tf2onnx_convert, tf2onnx_constants = _require(
        "tf", "converting a SavedModel", "tensorflow", "tensorflow.core.protobuf.saved_model_pb2",
        "tf2onnx.tf_loader", "tf2onnx.convert", "tf2onnx.constants")
    max_opset = max(tf2onnx_constants.OPSET_TO_IR_VERSION)
    if not 9 <= opset <= max_opset:
        raise UserError(f"--opset {opset}: tf2onnx supports opsets 9 to {max_opset}")
    signature = _serving_signature(saved_model_pb2, src)
    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(src), None, None, tag=["serve"], signatures=[signature],
            return_initialized_tables=True, return_tensors_to_rename=True)
    except Exception as exc:
        raise UserError(f"{src}: TensorFlow cannot load signature {signature!r}: {_first_line(exc)}") from None
    convert_common = getattr(tf2onnx_convert, "_convert_common", None)  # what its CLI calls; no public twin
    if convert_common is None:
        raise UserError("this tf2onnx version is not supported (no _convert_common): pip install 'tf2onnx>=1.17,<1.18'")
    freed = _free_batch(graph_def, inputs)
    if freed:
        log.info("%s: inputs %s had a fixed batch size; made it dynamic", src, ", ".join(freed))
    try:
        with tf.device("/cpu:0"):
            # The same call the tf2onnx command line makes (continue_on_error=False: an unsupported op
            # is an error here, not a model that fails later in TensorRT).
            model, _ = convert_common(
                graph_def, name=str(src), opset=opset, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, initialized_tables=tables, continue_on_error=False)
    except Exception as exc:
        raise UserError(f"{src}: tf2onnx cannot convert it: {_first_line(exc)}") from None
    _name_batch_dims(model)
    data = _serialize(model, out)
    try:
        session = _session(data)
        feed = _random_feed(session, batch=2)
        if feed is not None:
            session.run(None, feed)
    except Exception as exc:
        raise UserError(
            f"{src}: the converted model does not run in ONNX Runtime at batch 2 ({_first_line(exc)}); "
            "if the SavedModel fixes the batch size, re-export it with a None batch dimension"
        ) from None
    _write_atomic(out, data)
    log.info("converted %s (signature %r, opset %d) -> %s", src, signature, opset, out)
    return out


# ---- FP32 ONNX -> FP16 ONNX ------------------------------------------------------------------------


def _load_onnx(onnx, src: Path):
    try:
        model = onnx.load(str(src))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise UserError(f"{src}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise UserError(f"{src}: not a readable ONNX model (the graph is empty)")
    return model


def fp16_max_abs_diff(fp32_model: bytes, fp16_model: bytes, batch: int = 1,
                      seed: int = 0) -> tuple[float, float] | None:
    """(max |fp16 - fp32|, max |fp32|) over all outputs on one random batch in ONNX Runtime.

    None when the inputs have dynamic non-batch dimensions (no meaningful random input); inf when the
    FP16 model produces inf/NaN (FP16 overflow).
    """
    reference, candidate = _session(fp32_model), _session(fp16_model)
    feed = _random_feed(reference, batch, seed)
    if feed is None:
        return None
    types = {node.name: _FEED_TYPES.get(node.type, np.float32) for node in candidate.get_inputs()}
    expected = reference.run(None, feed)
    got = candidate.run(None, {name: value.astype(types[name]) for name, value in feed.items()})
    diff = magnitude = 0.0
    for want, have in zip(expected, got):
        want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
        if not np.all(np.isfinite(have)):
            return float("inf"), magnitude
        diff = max(diff, float(np.abs(want - have).max(initial=0.0)))
        magnitude = max(magnitude, float(np.abs(want).max(initial=0.0)))
    return diff, magnitude


def _convert_fp16(input_onnx, output_onnx, keep_io_types: bool = True,
                  tolerance: float = FP16_TOLERANCE) -> tuple[Path, float | None]:
    src, out = Path(input_onnx), Path(output_onnx)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    _check_output(out)
    onnx, float16 = _require("convert", "FP16 conversion", "onnx", "onnxconverter_common.float16")
    model = _load_onnx(onnx, src)
    fp32_bytes = model.SerializeToString()
    # Stale or duplicated value_info (torch.onnx.export + onnxslim leave duplicates) makes the converter
    # retype only some copies, giving a model ONNX Runtime refuses ("Type (tensor(float)) of output arg
    # ... does not match"); the converter re-infers shapes and types itself, so start without them.
    model.graph.ClearField("value_info")
    try:
        with warnings.catch_warnings(record=True) as caught:  # one warning per clamped weight: summarised below
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    except Exception as exc:
        raise UserError(f"{src}: onnxconverter-common cannot convert it to FP16: {_first_line(exc)}") from None
    clamped = sum("truncated" in str(w.message) for w in caught)
    if clamped:
        log.info("%s: %d weights clamped into onnxconverter-common's FP16 range (|w| in [1e-7, 1e4])", src, clamped)
    data = _serialize(converted, out)
    try:
        compared = fp16_max_abs_diff(fp32_bytes, data)
    except Exception as exc:
        raise UserError(f"{src}: the FP16 model does not run in ONNX Runtime ({_first_line(exc)})") from None
    if compared is None:
        log.warning("%s: inputs have dynamic non-batch dimensions; FP16 output not compared with FP32", src)
        diff = None
    else:
        diff, magnitude = compared
        if not np.isfinite(diff) or diff > tolerance * max(1.0, magnitude):
            raise UserError(
                f"{src}: FP16 output differs from FP32 by {diff:.3g} on random input (limit {tolerance:g} x "
                f"max(1, |output|)); keep the sensitive layers in FP32 with NVIDIA ModelOpt AutoCast instead"
            )
    _write_atomic(out, data)
    log.info("converted %s to FP16 -> %s (max |fp16 - fp32| %s)", src, out, diff)
    return out, diff


def convert_fp16(input_onnx: str | os.PathLike, output_onnx: str | os.PathLike, keep_io_types: bool = True) -> Path:
    """Write an FP16 copy of an FP32 ONNX model (for strongly typed TensorRT 11 engines); returns the path.

    Uses onnxconverter-common's ``float16.convert_float_to_float16``: light (pure Python) and enough for
    CNNs like the daemon's detectors and classifiers. Its default block list keeps a few ops in FP32;
    everything else becomes FP16 wholesale. With ``keep_io_types`` (default) the inputs and outputs
    stay float32, so the daemon's preprocessing and decoding are unchanged and TensorRT inserts the casts.

    Before writing, the FP16 model is run in ONNX Runtime next to the FP32 one on a random batch; inf/NaN
    (FP16 overflow) or a max abs difference over ``FP16_TOLERANCE`` (relative to the output's magnitude
    when that exceeds 1) is a UserError. This catches broken graphs and badly rounded weights, not FP16
    arithmetic: ONNX Runtime's CPU provider runs most FP16 nodes in FP32 (it inserts the casts itself),
    so TensorRT's FP16 kernels can differ a little more. For models that fail (transformers, large activations),
    NVIDIA ModelOpt AutoCast (``python -m modelopt.onnx.autocast``) is the stronger tool: it keeps
    numerically sensitive nodes in FP32 by measuring them on calibration data, at the cost of a much
    heavier install.
    """
    return _convert_fp16(input_onnx, output_onnx, keep_io_types)[0]


# ---- command line ------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    """``trtstream convert``: one conversion, one line on stdout; problems raise UserError."""
    if args.fp16 is not None:
        if args.opset is not None:
            raise UserError("--opset applies to --saved-model only")
        out, diff = _convert_fp16(args.fp16, args.output)
        checked = f"max |fp16 - fp32| {diff:.3g} on random input" if diff is not None else "not compared (dynamic input)"
        print(f"wrote {out} (FP16, {checked})")
        return 0
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    out = convert_saved_model(args.saved_model, args.output, opset)
    print(f"wrote {out} (ONNX opset {opset}, dynamic batch)")
    return 0


def add_convert_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``convert`` on the main CLI's subparsers; its handler is ``args.handler(args) -> exit code``."""
    parser = subparsers.add_parser(
        "convert",
        help="make a TensorRT-ready ONNX: TensorFlow SavedModel -> ONNX, or FP32 -> FP16 ONNX",
        description="Convert a TensorFlow SavedModel to ONNX (tf2onnx; needs trtstream[tf]) or an FP32 ONNX "
        "to FP16 for strongly typed TensorRT engines (needs trtstream[convert]). The output is written "
        "only after it has been checked in ONNX Runtime.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--saved-model", metavar="DIR", type=Path, help="TensorFlow 2 SavedModel directory")
    source.add_argument("--fp16", metavar="IN.onnx", type=Path, help="FP32 ONNX model to convert to FP16")
    parser.add_argument("-o", "--output", metavar="OUT.onnx", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, help=f"ONNX opset for --saved-model (default {DEFAULT_OPSET})")
    parser.set_defaults(handler=cmd_convert)
    return parser
