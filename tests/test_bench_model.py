"""The benchmark-only YOLOv8m-class detector (scripts/assets/bench_yolov8m.py, random weights, throughput
only): YOLOv8m's size, the Ultralytics output layout the detection pipeline decodes as anchors-last, a
few confident anchors per image rather than thousands, and an ONNX export that ONNX Runtime runs with
any batch. CPU only; needs torch (.venv-convert), so the main venv skips all but the one-line refusal."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "assets" / "bench_yolov8m.py"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def load():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("bench_yolov8m", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small():
    """The network at 320x320 (2100 anchors), calibrated on 4 frames: what the 640 model is, 4x cheaper."""
    bench = load()
    return bench, bench.build(seed=0, imgsz=320, calibration=4)


def test_the_network_has_yolov8m_s_size_at_640():
    bench = load()
    model = bench.YOLOv8m(640)
    params = bench.parameter_count(model)
    assert 22.5e6 <= params <= 27.5e6, params  # 25 M +- 10 % (Ultralytics YOLOv8m: 25.9 M)
    assert sum(model.detect.cells) == 80 * 80 + 40 * 40 + 20 * 20 == 8400
    bench.fold_batchnorm(model)
    assert 22.5e6 <= bench.parameter_count(model) <= params  # folding drops the BN parameters


def test_the_output_is_the_anchors_last_layout_with_a_few_confident_anchors(small):
    import torch

    bench, model = small
    x = bench.calibration_images(2, 320, torch.Generator().manual_seed(7))  # not the calibration frames
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == (2, 84, 2100)  # [N, 4 + 80 classes, 40^2 + 20^2 + 10^2 anchors]
    assert np.isfinite(out).all()
    cx, cy, w, h, scores = out[:, 0], out[:, 1], out[:, 2], out[:, 3], out[:, 4:]
    # Boxes are centres and sizes in input pixels: centres on the grid, sizes up to 2 x 15 bins x stride.
    assert (cx > -320).all() and (cx < 640).all() and (cy > -320).all() and (cy < 640).all()
    assert (w > 0).all() and (h > 0).all() and (w < 2 * 15 * 32 + 1).all() and (h < 2 * 15 * 32 + 1).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    best = scores.max(axis=1)  # [N, anchors]
    assert np.median(best) < 0.02  # nearly every anchor far below the 0.25 threshold ...
    above = (best > 0.25).sum(axis=1)
    assert 0 < above.sum() and (above < 300).all(), above  # ... a few per image above it, never thousands
    if _has("cv2") and _has("pydantic"):  # the main venv's pipeline (not in .venv-convert)
        from pipelines.detection import ANCHORS_LAST, resolve_layout

        assert resolve_layout(out.shape, 80) == ANCHORS_LAST


def test_the_onnx_export_runs_in_onnxruntime_with_any_batch(small, tmp_path):
    import torch

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    bench, model = small
    path = tmp_path / "bench.onnx"
    bench.export(model, path)
    proto = onnx.load(str(path))
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(v.name, dims(v)) for v in proto.graph.input] == [("images", ["batch", 3, 320, 320])]
    assert [(v.name, dims(v)) for v in proto.graph.output] == [("output0", ["batch", 84, 2100])]
    assert proto.opset_import[0].version == 17
    # No Shape arithmetic and no Constant nodes: onnx2torch's modules then never read shapes from the GPU.
    assert not {n.op_type for n in proto.graph.node} & {"Shape", "Constant", "Gather"}
    # Splits into equal parts carry no sizes tensor (onnx2torch would read it back from the GPU).
    splits = [n for n in proto.graph.node if n.op_type == "Split"]
    assert splits and all(len(n.input) == 1 for n in splits)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = bench.calibration_images(3, 320, torch.Generator().manual_seed(8))  # exported with batch 1
    got = session.run(["output0"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (3, 84, 2100)
    assert bench.disagreement(got, want) is None  # float32 rounding only: < 0.5 px, < 1e-3 on scores
    assert bench.disagreement(got[:, :, :-1], want) is not None and bench.disagreement(got[:, ::-1], want) is not None
    if _has("onnx2torch"):  # carried to the GPU machine; what the torch backend converts
        import onnx2torch

        with torch.no_grad():
            converted = onnx2torch.convert(str(path)).eval()(x).numpy()
        assert bench.disagreement(converted, want) is None


def test_the_cli_writes_atomically_and_prints_the_size(tmp_path):
    load()
    pytest.importorskip("onnx")
    out = tmp_path / "models" / "bench_320.onnx"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--imgsz", "320", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RANDOM weights" in done.stdout and "M parameters" in done.stdout and "[N, 84, 2100]" in done.stdout
    assert f"wrote {out} (" in done.stdout and " MB)" in done.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench_320.onnx"]  # no temporary file left


def test_without_torch_the_cli_says_so_in_one_line(tmp_path):
    if _has("torch"):
        pytest.skip("torch is installed here: the refusal cannot be observed")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "needs torch and onnx" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.onnx").exists()
