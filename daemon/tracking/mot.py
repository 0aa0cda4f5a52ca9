"""Offline tracking of MOTChallenge detection files: ``trtstream track --mot-det DET.txt --out OUT.txt``.

Why: the tracker's quality can then be measured against public ground truth (MOTA, IDF1 with
``motmetrics`` or TrackEval) and compared with other trackers on the very same detections, without a
camera, a model or a GPU.

Input lines ``frame,id,x,y,w,h,score[,...]``: frames 1-based, ``id`` ignored, (x, y) the top-left corner,
pixels. Output lines ``frame,id,x,y,w,h,score,-1,-1,-1`` for confirmed tracks matched in that frame,
what MOTChallenge's evaluation expects (coasting predictions are not detections, and tentative tracks
are not yet tracks).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analyticsconfig import TrackingConfig
from ..errors import UserError
from ..fsutil import describe_write_error, write_atomically
from .bytetrack import ByteTracker

__all__ = ["MotFormatError", "read_detections", "run_mot", "Detections"]

Detections = dict[int, tuple[np.ndarray, np.ndarray]]
"""frame -> (boxes [N, 4] xyxy, scores [N])."""


class MotFormatError(UserError):
    """A detection file line that is not ``frame,id,x,y,w,h,score[,...]``: names the file and the line."""


def read_detections(path: Path) -> tuple[Detections, int]:
    """The file's detections per frame, and the last frame number. Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: detection file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the detection file: {exc}") from None
    per_frame: dict[int, list[tuple[float, float, float, float, float]]] = {}
    last_frame = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        frame, x, y, w, h, score = _parse_line(line, path, number)
        per_frame.setdefault(frame, []).append((x, y, x + w, y + h, score))
        last_frame = max(last_frame, frame)
    detections: Detections = {}
    for frame, rows in per_frame.items():
        array = np.array(rows, dtype=np.float64)
        detections[frame] = (array[:, :4], array[:, 4])
    return detections, last_frame


def _parse_line(line: str, path: Path, number: int) -> tuple[int, float, float, float, float, float]:
    fields = [f.strip() for f in line.split(",")]

    def bad(why: str) -> MotFormatError:
        return MotFormatError(f"{path}: line {number}: {why} (expected frame,id,x,y,w,h,score[,...])")

    if len(fields) < 7:
        raise bad(f"{len(fields)} fields, need at least 7")
    try:
        values = [float(f) for f in fields[:7]]
    except ValueError:
        raise bad("not a number: " + next(repr(f) for f in fields[:7] if not _is_float(f))) from None
    if not all(math.isfinite(v) for v in values):
        raise bad("NaN or infinite value")
    frame, _, x, y, w, h, score = values
    if not frame.is_integer() or frame < 1:
        raise bad(f"frame must be a whole number from 1, got {fields[0]!r}")
    if w <= 0 or h <= 0:
        raise bad(f"width and height must be positive, got {fields[4]!r}, {fields[5]!r}")
    return int(frame), x, y, w, h, score


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_mot(det_path: Path, out_path: Path, config: TrackingConfig, fps: float = 30.0) -> dict[str, int]:
    """Track every frame from 1 to the file's last (frames without detections included: tracks coast
    through them), write the results to ``out_path`` atomically, return counts: ``frames``,
    ``detections``, ``tracks`` (confirmed tracks written) and ``boxes`` (lines written)."""
    detections, last_frame = read_detections(Path(det_path))
    tracker = ByteTracker(config)
    empty_boxes, empty_scores = np.zeros((0, 4)), np.zeros(0)
    lines: list[str] = []
    track_ids: set[int] = set()
    for frame in range(1, last_frame + 1):
        boxes, scores = detections.get(frame, (empty_boxes, empty_scores))
        step = tracker.update(boxes, scores, np.zeros(len(scores), dtype=np.int64), frame, (frame - 1) / fps)
        for obj in step.objects:
            if obj.state != "confirmed" or not obj.matched_now:
                continue
            x1, y1, x2, y2 = obj.box
            lines.append(f"{frame},{obj.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj.score:.4f},-1,-1,-1\n")
            track_ids.add(obj.track_id)
    tracker.finish(last_frame / fps)
    out_path = Path(out_path)
    try:
        write_atomically(out_path, "".join(lines).encode())
    except OSError as exc:
        raise UserError(describe_write_error(exc, out_path)) from None
    return {
        "frames": last_frame,
        "detections": sum(len(s) for _, s in detections.values()),
        "tracks": len(track_ids),
        "boxes": len(lines),
    }
