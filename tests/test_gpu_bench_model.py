"""GPU: the benchmark-only YOLOv8m-class detector (scripts/assets/bench_yolov8m.py, random weights,
throughput only) is generated on this machine (its ~100 MB ONNX is never carried) and runs in the torch
backend, CUDA graphs and fp16, with the [B, 84, 8400] output the detection pipeline decodes; its
outputs follow FP32 ONNX Runtime's. Marker ``gpu``; skipped (with the reason) without an NVIDIA GPU.
Run with ``python3 -m pytest -q -m gpu tests/test_gpu_bench_model.py`` (about 30 s)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import gpu_marks

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "assets" / "bench_yolov8m.py"



pytestmark = gpu_marks()


def _torch_backend(model: Path, max_batch: int, streams: int):
    from daemon.backends.torch import torch_backend

    return torch_backend(model, max_batch, streams, half=True)


def test_the_generated_yolov8m_class_model_runs_in_the_torch_backend(tmp_path):
    pytest.importorskip("onnx2torch")
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    import torch

    model = tmp_path / "yolov8m_bench_640.onnx"
    done = subprocess.run([sys.executable, str(SCRIPT), str(model)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[N, 84, 8400]" in done.stdout and model.stat().st_size > 90e6, done.stdout

    spec = importlib.util.spec_from_file_location("bench_yolov8m", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    batch = 4
    x = bench.calibration_images(batch, 640, torch.Generator().manual_seed(11)).numpy()

    backend = _torch_backend(model, batch, 1)
    try:
        assert [(s.name, tuple(s.shape[1:])) for s in backend.info.inputs] == [("images", (3, 640, 640))]
        assert [(s.name, tuple(s.shape[1:])) for s in backend.info.outputs] == [("output0", (84, 8400))]
        slot = backend.create_slot(0)
        slot.inputs["images"][:batch] = x.astype(slot.inputs["images"].dtype)
        backend.submit(slot, batch)
        out = backend.wait(slot)["output0"].copy()  # a view of the slot's pinned buffer, freed by close()
    finally:
        backend.close()
    assert out.shape == (batch, 84, 8400)
    assert np.isfinite(out).all()

    try:
        import onnxruntime as ort
    except ImportError:
        return
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["output0"], {"images": x})[0]
    # fp16 against fp32 (a random network amplifies rounding more than a trained one): boxes within a
    # pixel on average, scores close, and the same few confident anchors for the most part.
    assert np.abs(out[:, :4] - want[:, :4]).mean() < 1.0
    assert np.abs(out[:, 4:] - want[:, 4:]).max() < 0.5
    confident, reference = out[:, 4:].max(1) > 0.25, want[:, 4:].max(1) > 0.25
    assert reference.sum() > 0 and (reference.sum(1) < 300).all()
    assert (confident & reference).sum() >= 0.7 * reference.sum()
