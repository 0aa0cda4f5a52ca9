"""``trtstream track`` on real MOTChallenge ground truth (TUD-Campus, shipped inside motmetrics), degraded
into detections, scored with motmetrics; and its errors.

``degrade_ground_truth`` and ``score`` are also used by scripts/bench-tracker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Measured (seed 0, default [tracking]): MOTA 0.827, IDF1 0.884; the bars sit safely below.
MIN_MOTA = 0.72
MIN_IDF1 = 0.78


def tud_campus_gt() -> Path:
    """The ground truth file inside the installed motmetrics wheel."""
    from importlib.resources import files

    path = Path(str(files("motmetrics") / "data" / "TUD-Campus" / "gt.txt"))
    if not path.is_file():
        pytest.fail(f"motmetrics ships no {path} (the test extra installs motmetrics>=1.4)")
    return path


def degrade_ground_truth(gt_path: Path, out_path: Path, seed: int = 0) -> int:
    """Detections a plausible detector would give: each ground-truth box jittered by a few % of its size,
    ~10 % dropped, scores 0.3..1 (mostly high), plus ~5 % false positives scoring 0.1..0.55 near real
    objects. Returns the number of lines written."""
    rng = np.random.default_rng(seed)
    gt = np.loadtxt(gt_path, delimiter=",", ndmin=2)
    gt = gt[gt[:, 6] != 0]  # MOTChallenge: flag 0 = ignore
    lines = []
    for frame, _, x, y, w, h, *_ in gt:
        if rng.random() < 0.10:
            continue
        jitter = rng.normal(0, 0.03, 4) * [w, h, w, h]
        score = float(np.clip(rng.beta(5, 1.5), 0.3, 1.0))
        lines.append((int(frame), x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3], score))
    frames = np.unique(gt[:, 0]).astype(int)
    sizes = gt[:, 4:6]
    for frame in frames:
        if rng.random() < 0.5:
            continue
        w, h = sizes[rng.integers(len(sizes))]
        x = rng.uniform(0, 640 - w)
        y = rng.uniform(0, 480 - h)
        lines.append((int(frame), x, y, w, h, float(rng.uniform(0.1, 0.55))))
    lines.sort(key=lambda line: line[0])
    out_path.write_text("".join(f"{f},-1,{x:.2f},{y:.2f},{w:.2f},{h:.2f},{s:.4f},-1,-1,-1\n" for f, x, y, w, h, s in lines))
    return len(lines)


def score(gt_path: Path, results_path: Path) -> dict[str, float]:
    """MOTA, IDF1 (and the counts behind them) of ``results_path`` against ``gt_path``, matched at IoU
    0.5. The distances are computed here: motmetrics 1.4's own IoU helper calls ``np.asfarray``, gone
    in numpy 2."""
    import motmetrics as mm

    gt = np.loadtxt(gt_path, delimiter=",", ndmin=2)
    gt = gt[gt[:, 6] != 0]
    results = np.loadtxt(results_path, delimiter=",", ndmin=2) if Path(results_path).stat().st_size else np.zeros((0, 10))
    accumulator = mm.MOTAccumulator(auto_id=True)
    for frame in np.unique(np.concatenate([gt[:, 0], results[:, 0]])):
        g = gt[gt[:, 0] == frame]
        r = results[results[:, 0] == frame]
        accumulator.update(g[:, 1].astype(int).tolist(), r[:, 1].astype(int).tolist(), _iou_distance(g[:, 2:6], r[:, 2:6]))
    metrics = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses"]
    summary = mm.metrics.create().compute(accumulator, metrics=metrics, name="run")
    return {name: float(summary[name].iloc[0]) for name in metrics}


def _iou_distance(a: np.ndarray, b: np.ndarray, max_distance: float = 0.5) -> np.ndarray:
    """1 - IoU of x, y, w, h boxes, NaN (no match possible) beyond ``max_distance``."""
    a_max, b_max = a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:]
    size = np.clip(np.minimum(a_max, b_max) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = size[..., 0] * size[..., 1]
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    distance = 1 - inter / union
    distance[distance > max_distance] = np.nan
    return distance


def run_track(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", "track", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_tracking_degraded_tud_campus_scores_well(tmp_path):
    pytest.importorskip("motmetrics", reason="the test extra installs motmetrics")
    gt = tud_campus_gt()
    det = tmp_path / "det.txt"
    out = tmp_path / "out.txt"
    degrade_ground_truth(gt, det, seed=0)
    result = run_track("--mot-det", str(det), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "boxes written" in result.stdout
    rows = np.loadtxt(out, delimiter=",", ndmin=2)
    assert rows.shape[1] == 10 and (rows[:, 7:] == -1).all()
    measured = score(gt, out)
    print(f"TUD-Campus degraded (seed 0): MOTA {measured['mota']:.3f}, IDF1 {measured['idf1']:.3f}, {measured}")
    assert measured["mota"] >= MIN_MOTA
    assert measured["idf1"] >= MIN_IDF1


def test_the_tracking_section_of_a_config_is_used(tmp_path):
    gt = tud_campus_gt()
    det = tmp_path / "det.txt"
    degrade_ground_truth(gt, det, seed=0)
    config = tmp_path / "config.toml"
    # Not a whole config (no sources, no model): only [tracking] is read.
    config.write_text("[tracking]\nconfirm_frames = 1\nnew_track_threshold = 0.3\nhigh_threshold = 0.3\n")
    default_out, tuned_out = tmp_path / "default.txt", tmp_path / "tuned.txt"
    assert run_track("--mot-det", str(det), "--out", str(default_out)).returncode == 0
    assert run_track("--mot-det", str(det), "--out", str(tuned_out), "--config", str(config)).returncode == 0
    default_rows = np.loadtxt(default_out, delimiter=",", ndmin=2)
    tuned_rows = np.loadtxt(tuned_out, delimiter=",", ndmin=2)
    assert default_rows[:, 0].min() >= 2  # confirm_frames 2: nothing on the first frame
    assert tuned_rows[:, 0].min() == 1
    assert len(tuned_rows) > len(default_rows)


def test_an_invalid_tracking_section_is_one_line_per_problem(tmp_path):
    det = tmp_path / "det.txt"
    det.write_text("1,-1,10,10,20,40,0.9\n")
    config = tmp_path / "config.toml"
    config.write_text("[tracking]\nmatch_iou = 2\nconfirm_frame = 3\n")
    result = run_track("--mot-det", str(det), "--out", str(tmp_path / "out.txt"), "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("tracking.match_iou" in line for line in lines) and any("tracking.confirm_frame" in line and "unknown key" in line for line in lines)
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize(
    "bad_line, why",
    [
        ("2,-1,10,10,20", "5 fields"),
        ("2,-1,10,ten,20,40,0.9", "not a number: 'ten'"),
        ("0,-1,10,10,20,40,0.9", "frame must be a whole number"),
        ("2.5,-1,10,10,20,40,0.9", "frame must be a whole number"),
        ("2,-1,10,10,-20,40,0.9", "width and height must be positive"),
        ("2,-1,10,10,20,nan,0.9", "NaN or infinite"),
    ],
)
def test_a_malformed_detection_file_is_one_line_naming_file_and_line(tmp_path, bad_line, why):
    det = tmp_path / "det.txt"
    det.write_text(f"1,-1,10,10,20,40,0.9\n\n{bad_line}\n3,-1,10,10,20,40,0.9\n")
    out = tmp_path / "out.txt"
    out.write_text("previous results\n")
    result = run_track("--mot-det", str(det), "--out", str(out))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"trtstream: error: {det}: line 3: ")
    assert why in line
    assert out.read_text() == "previous results\n"  # untouched: no half-written results
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_missing_detection_file_is_one_line(tmp_path):
    result = run_track("--mot-det", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out.txt"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"trtstream: error: {tmp_path / 'nope.txt'}: detection file not found"


def test_run_mot_counts_and_frames_without_detections(tmp_path):
    from daemon.analyticsconfig import TrackingConfig
    from daemon.tracking.mot import run_mot

    det = tmp_path / "det.txt"
    # One object moving right, absent on frames 4 and 5 (no lines at all): it coasts and comes back.
    det.write_text("".join(f"{f},-1,{10 + 5 * f},50,20,40,0.9\n" for f in (1, 2, 3, 6, 7)))
    out = tmp_path / "out.txt"
    counts = run_mot(det, out, TrackingConfig(confirm_frames=2))
    assert counts == {"frames": 7, "detections": 5, "tracks": 1, "boxes": 4}
    rows = np.loadtxt(out, delimiter=",", ndmin=2)
    assert rows[:, 0].tolist() == [2, 3, 6, 7] and set(rows[:, 1]) == {1}
    np.testing.assert_allclose(rows[0, 2:7], [20, 50, 20, 40, 0.9])
