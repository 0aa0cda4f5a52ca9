"""The converted models are checked by meaning, not by bytes (issue 9): a model whose weights differ
from the golden one only in their last bits, as a model converted on another CPU does, is accepted;
a model with one wrong weight or a reordered tensor is refused with a line naming what differs; and
``scripts/fetch-assets`` keeps the first and rebuilds the second.

The "other CPU" here is simulated by moving every weight of the real model by one unit in the last
place (what different ONNX Runtime / PyTorch kernels do to folded constants); a real second CPU
kind is not available to CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, asset, missing

VERIFY = REPO / "scripts" / "assets" / "verify_model.py"
GOLDEN = REPO / "scripts" / "assets" / "golden"


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        missing("onnx is not installed (pip install .[convert])")
    return onnx, numpy_helper


def rewrite_weights(src: Path, dst: Path, change) -> None:
    """Copy a model with ``change(array) -> array`` applied to every float initializer of > 16 values
    (small ones are Resize scales and shapes, not weights)."""
    onnx, numpy_helper = _onnx()
    model = onnx.load(str(src))
    for index, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16:
            init.CopyFrom(numpy_helper.from_array(change(index, array).astype(np.float32), init.name))
    onnx.save(model, str(dst))


def one_ulp(_index: int, array: np.ndarray) -> np.ndarray:
    """Every value moved by one unit in the last place, up or down at random."""
    direction = np.where(np.random.default_rng(7).random(array.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
    return np.nextafter(array, direction)


def verify(model: Path, golden: str) -> subprocess.CompletedProcess:
    _onnx()  # verify_model.py needs onnx in this interpreter
    return subprocess.run([sys.executable, str(VERIFY), "check", str(model), str(GOLDEN / golden)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["yolov3_tiny_416", "yolov3_tiny_320", "efficientnet_lite0"])
def test_the_built_model_and_a_last_bit_variant_match_the_golden_record(name: str, tmp_path: Path) -> None:
    model = asset(f"models/{name}.onnx")
    assert verify(model, f"{name}.json").returncode == 0
    variant = tmp_path / f"{name}.onnx"
    rewrite_weights(model, variant, one_ulp)
    assert variant.read_bytes() != model.read_bytes()
    result = verify(variant, f"{name}.json")
    assert result.returncode == 0, result.stderr


def test_one_wrong_weight_is_refused_naming_the_initializer(tmp_path: Path) -> None:
    model = asset("models/yolov3_tiny_416.onnx")
    wrong = tmp_path / "wrong.onnx"

    def scale_one(index: int, array: np.ndarray) -> np.ndarray:
        if index != 5:
            return array
        array = array.copy()
        array.flat[array.size // 2] *= 1.5
        return array

    rewrite_weights(model, wrong, scale_one)
    result = verify(wrong, "yolov3_tiny_416.json")
    assert result.returncode == 1
    assert "initializer" in result.stderr and "golden" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reordered_tensor_keeps_its_sums_but_not_its_outputs(tmp_path: Path) -> None:
    model = asset("models/efficientnet_lite0.onnx")
    wrong = tmp_path / "reordered.onnx"
    rewrite_weights(model, wrong, lambda index, a: a[::-1].copy() if index == 40 else a)
    result = verify(wrong, "efficientnet_lite0.json")
    assert result.returncode == 1
    assert "output on the" in result.stderr
    assert "initializer" not in result.stderr   # same values, other order: only the outputs can tell


def test_a_file_that_is_no_model_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model\n")
    result = verify(bogus, "yolov3_tiny_320.json")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot be loaded" in result.stderr


def test_fetch_assets_keeps_a_model_from_another_cpu_and_rebuilds_a_wrong_one(tmp_path: Path) -> None:
    """The real script on a copy of the checkout that shares the download cache and the converter venv."""
    if not (REPO / ".venv-convert" / "bin" / "python").exists():
        pytest.fail("no .venv-convert: run scripts/fetch-assets first")
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "fetch-assets", root / "scripts")
    shutil.copytree(REPO / "scripts" / "assets", root / "scripts" / "assets")
    shutil.copytree(REPO / "assets", root / "assets", ignore=shutil.ignore_patterns(".lock", ".tmp-*"))
    (root / ".venv-convert").symlink_to(REPO / ".venv-convert")
    (root / ".cache").symlink_to(REPO / ".cache")
    models = root / "assets" / "models"
    rewrite_weights(asset("models/yolov3_tiny_416.onnx"), models / "yolov3_tiny_416.onnx", one_ulp)
    other_cpu = (models / "yolov3_tiny_416.onnx").read_bytes()
    rewrite_weights(asset("models/yolov3_tiny_320.onnx"), models / "yolov3_tiny_320.onnx", lambda i, a: a * 1.01)
    (root / "assets" / "MANIFEST.sha256").unlink()

    result = subprocess.run([str(root / "scripts" / "fetch-assets")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "yolov3_tiny_320.onnx does not match its golden record; rebuilding it" in result.stdout
    assert "yolov3_tiny_416.onnx does not match" not in result.stdout
    assert (models / "yolov3_tiny_416.onnx").read_bytes() == other_cpu
    # Every step names itself with the time since start (issue 9: honest progress on first set-up).
    assert all(re.fullmatch(r"fetch-assets: \[ *\d+\.\d s\] .+", line) for line in result.stdout.splitlines()), result.stdout
    assert re.search(r"ok  assets/models/yolov3_tiny_320.onnx \(\d+\.\d s;", result.stdout)
    manifest = (root / "assets" / "MANIFEST.sha256").read_text()
    assert "models/yolov3_tiny_416.onnx" in manifest and "models/efficientnet_lite0.onnx" in manifest
    again = subprocess.run([str(root / "scripts" / "fetch-assets")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "present and verified" in again.stdout


def test_setup_names_and_times_each_step_and_is_silent_when_done(tmp_path: Path) -> None:
    """scripts/setup into a fresh venv (no extras: about 10 s from the local index), then again."""
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.executable}
    first = subprocess.run([str(REPO / "scripts" / "setup")], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr
    steps = first.stderr.splitlines()
    assert [re.sub(r"\[ *\d+\.\d s\] ", "[t] ", line).split(" (")[0] for line in steps] == [
        "scripts/setup: [t] creating " + str(tmp_path / "venv"),
        "scripts/setup: [t] upgrading pip",
        "scripts/setup: [t] installing trtstream and its dependencies",
        "scripts/setup: [t] ok: " + str(tmp_path / "venv") + " is ready",
    ], first.stderr
    assert (tmp_path / "venv" / "bin" / "trtstream").exists()
    again = subprocess.run([str(REPO / "scripts" / "setup")], capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 0 and again.stderr == ""
