"""Semantic check of a converted model against its golden record (scripts/assets/golden/NAME.json).

Why not a sha256 of the .onnx: the conversion folds constants by running subgraphs through ONNX Runtime
(onnxslim) and PyTorch, whose kernels take different code paths per instruction set (AVX2, AVX-512,
AMD or Intel). The same pinned inputs and tools then give models whose weights differ in their last
bits from one CPU to the next: every one of them is right, but no single hash can say so. What is
pinned by hash instead are the inputs (the darknet weights, the wheels, the hash-locked converter
venv); what this script checks is that the output *is that model*:

  * the graph's signature: opset, input and output names, dtypes and shapes (symbolic dims by name),
    and how many nodes of each operator type it has;
  * every initializer: name, dtype, shape, and its sum and sum of absolute values (float64), within
    a relative 1e-4, so a changed, missing or reordered weight tensor fails while last-bit rounding
    does not;
  * the outputs of ONNX Runtime on two fixed inputs built with integer arithmetic only (a pattern and
    a gradient, identical on every machine): a strided sample of the raw outputs and the mean of every
    output column, each within ``ATOL + RTOL * |golden|``.

Differences between CPUs are about 1e-6 relative; a wrong weight, layout, pre-processing convention or
decoding step moves these numbers by orders of magnitude more.

Usage:
  verify_model.py check  MODEL.onnx GOLDEN.json   exit 0 when it matches, else 1 with one line per mismatch
  verify_model.py record MODEL.onnx GOLDEN.json   (maintainers) write the golden record of a model built
                                                  and checked by hand, after a deliberate converter change
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ATOL = 1e-3          # absolute tolerance on outputs (box pixels up to 416, probabilities, logits)
RTOL = 1e-3          # relative tolerance on outputs
WEIGHT_RTOL = 1e-4   # relative tolerance on an initializer's sum and sum of |x|
SAMPLES = 1024       # raw output values kept per input
FORMAT = 1


def signature(model: onnx.ModelProto) -> dict:
    """Opset, IO names/dtypes/shapes and operator counts: what a consumer of the model relies on."""
    def io(values) -> list:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": io(v for v in model.graph.input if v.name not in initializers),
        "outputs": io(model.graph.output),
        "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    }


def weight_stats(model: onnx.ModelProto) -> dict:
    """name -> dtype, shape, sum and sum of |x| of every initializer."""
    stats = {}
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        f = a.astype(np.float64)
        stats[init.name] = {"dtype": a.dtype.name, "shape": list(a.shape), "sum": float(f.sum()), "abs": float(np.abs(f).sum())}
    return dict(sorted(stats.items()))


def fixed_inputs(shape: list[int], dtype: str) -> dict[str, np.ndarray]:
    """Two images made with integer arithmetic (identical everywhere), scaled into [0, 1]."""
    _, c, h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    ch = np.arange(c, dtype=np.int64)[:, None, None]
    pattern = ((x * 7 + y * 13 + ch * 61) ^ (x * y // 5)) % 256
    gradient = (x * 255 // max(w - 1, 1) + ch * 85 + (y // 32) * 16) % 256
    return {name: (img[None].astype(np.float64) / 255.0).astype(dtype)
            for name, img in (("pattern", pattern), ("gradient", gradient))}


def run_outputs(path: Path, sig: dict) -> dict:
    """Per fixed input: the strided sample of the first output and its per-column means."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors surface as exceptions; ORT's own warnings are noise here
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    spec = sig["inputs"][0]
    shape = [1 if isinstance(d, str) else d for d in spec["shape"]]
    results = {}
    for name, x in fixed_inputs(shape, spec["dtype"]).items():
        y = session.run(None, {spec["name"]: x})[0].astype(np.float64)
        flat = y.reshape(-1)
        step = max(1, flat.size // SAMPLES)
        columns = y.reshape(-1, y.shape[-1]).mean(axis=0)
        results[name] = {"shape": list(y.shape), "step": step, "sample": flat[::step][:SAMPLES].tolist(),
                         "column_means": columns.tolist()}
    return results


def describe(path: Path) -> dict:
    model = onnx.load(str(path))
    sig = signature(model)
    return {"format": FORMAT, "signature": sig, "weights": weight_stats(model), "outputs": run_outputs(path, sig)}


def close(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[bool, str]:
    err = np.abs(got - want) - (atol + rtol * np.abs(want))
    worst = int(np.argmax(err))
    return bool(err[worst] <= 0), f"worst at [{worst}]: {got.flat[worst]:.6g} vs {want.flat[worst]:.6g}"


def compare(got: dict, want: dict) -> list[str]:
    """One line per mismatch; empty when the model is the golden one."""
    problems = []
    for key in ("opset", "inputs", "outputs", "ops"):
        if got["signature"][key] != want["signature"][key]:
            problems.append(f"graph {key}: {got['signature'][key]} != golden {want['signature'][key]}")
    gw, ww = got["weights"], want["weights"]
    if set(gw) != set(ww):
        problems.append(f"initializers: {len(gw)} named differently from the golden {len(ww)} "
                        f"(only here: {sorted(set(gw) - set(ww))[:3]}, only golden: {sorted(set(ww) - set(gw))[:3]})")
    for name in sorted(set(gw) & set(ww)):
        g, w = gw[name], ww[name]
        if (g["dtype"], g["shape"]) != (w["dtype"], w["shape"]):
            problems.append(f"initializer {name}: {g['dtype']}{g['shape']} != golden {w['dtype']}{w['shape']}")
            continue
        for stat in ("sum", "abs"):
            scale = max(abs(w[stat]), w["abs"] / max(1, np.prod(w["shape"], dtype=np.int64)), 1e-12)
            if abs(g[stat] - w[stat]) > WEIGHT_RTOL * scale:
                problems.append(f"initializer {name}: {stat} {g[stat]:.9g} != golden {w[stat]:.9g}")
    for name, w in want["outputs"].items():
        g = got["outputs"].get(name)
        if g is None or g["shape"] != w["shape"] or g["step"] != w["step"]:
            problems.append(f"output on the {name} input: shape {g and g['shape']} != golden {w['shape']}")
            continue
        for part in ("sample", "column_means"):
            ok, where = close(np.asarray(g[part]), np.asarray(w[part]), ATOL, RTOL)
            if not ok:
                problems.append(f"output on the {name} input, {part}: beyond {ATOL} + {RTOL}*|golden|, {where}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("check", "record"):
        print(__doc__.split("Usage:")[1], file=sys.stderr)
        return 2
    mode, model, golden = argv[0], Path(argv[1]), Path(argv[2])
    try:
        got = describe(model)
    except Exception as exc:  # a model ONNX or ONNX Runtime cannot load or run is a mismatch, said in one line
        print(f"verify_model: {model.name}: cannot be loaded or run: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 1
    if mode == "record":
        golden.write_text(json.dumps(got, indent=1) + "\n")
        print(f"verify_model: wrote {golden}")
        return 0
    want = json.loads(golden.read_text())
    problems = compare(got, want) if want.get("format") == FORMAT else [f"{golden}: format {want.get('format')} != {FORMAT}"]
    for line in problems[:10]:
        print(f"verify_model: {model.name}: {line}", file=sys.stderr)
    if len(problems) > 10:
        print(f"verify_model: {model.name}: ... and {len(problems) - 10} more", file=sys.stderr)
    if not problems:
        print(f"verify_model: {model.name} matches {golden.name} (graph, {len(got['weights'])} initializers, outputs on 2 fixed inputs)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
