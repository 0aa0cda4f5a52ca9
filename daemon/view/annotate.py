"""Drawing one result onto its frame for the live view: boxes, labels, scores, track ids, zones, lines.

OpenCV's drawing functions, in place on a frame already scaled to the view's width (``scale`` maps
source pixels, in which results, zones and lines are given, to the drawn image). Colours: a track's
colour follows its id (the same cyclist keeps its colour from frame to frame), an untracked detection's
its class. A coasting track (``matched_now`` false: the tracker's prediction, not a detection) is drawn
thin and marked, so a ghost box is never mistaken for a detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..analytics.geometry import scale_points
from ..analyticsconfig import LineConfig, ZoneConfig

__all__ = ["PALETTE", "ZONE_COLOR", "LINE_COLOR", "Regions", "color_for", "annotate"]

# BGR, bright and far apart from each other (and from the zone and line colours)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 255, 0), (255, 128, 0), (0, 128, 255), (255, 0, 128), (0, 255, 255), (128, 0, 255), (255, 255, 0), (0, 0, 255),
    (128, 255, 0), (255, 0, 255),
)  # fmt: skip
ZONE_COLOR = (0, 200, 255)
LINE_COLOR = (255, 0, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Regions:
    """One source's zones and lines, as configured (scaled to each frame's size when drawn)."""

    zones: tuple[ZoneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()


def color_for(detection: Mapping[str, Any]) -> tuple[int, int, int]:
    """A detection's box colour: by track id when it has one, else by class id."""
    track_id = detection.get("track_id")
    key = int(track_id) if track_id is not None else int(detection.get("class_id", 0))
    return PALETTE[key % len(PALETTE)]


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Text on a filled box of ``color``, above (x, y) where there is room, else below it."""
    (width, height), baseline = cv2.getTextSize(text, _FONT, 0.45, 1)
    top = y - height - baseline - 2 if y - height - baseline - 2 >= 0 else y
    x = max(0, min(x, image.shape[1] - width - 4))  # inside the picture, also for a region at its right edge
    cv2.rectangle(image, (x, top), (x + width + 4, top + height + baseline + 2), color, cv2.FILLED)
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    cv2.putText(image, text, (x + 2, top + height + 1), _FONT, 0.45, (0, 0, 0) if luminance > 128 else (255, 255, 255), 1, cv2.LINE_AA)


def _draw_regions(image: np.ndarray, regions: Regions, counters: Mapping[str, Any], scale: float, width: int, height: int) -> None:
    zone_counts = counters.get("zones", {})
    line_counts = counters.get("lines", {})
    for zone in regions.zones:
        points = np.round(scale_points(zone.polygon, zone.coordinates, width, height) * scale).astype(np.int32)
        cv2.polylines(image, [points], True, ZONE_COLOR, 2, cv2.LINE_AA)
        count = zone_counts.get(zone.name, {})
        text = f"{zone.name}: {count['occupancy']} inside" if "occupancy" in count else zone.name
        _label(image, text, int(points[:, 0].min()), int(points[:, 1].min()), ZONE_COLOR)
    for line in regions.lines:
        (x1, y1), (x2, y2) = np.round(scale_points(line.points, line.coordinates, width, height) * scale).astype(int).tolist()
        cv2.line(image, (x1, y1), (x2, y2), LINE_COLOR, 2, cv2.LINE_AA)
        count = line_counts.get(line.name, {})
        text = f"{line.name}: {count['forward']} fwd / {count['backward']} back" if "forward" in count else line.name
        _label(image, text, min(x1, x2), min(y1, y2), LINE_COLOR)


def annotate(image: np.ndarray, detections: Sequence[Mapping[str, Any]], scale: float, source_size: tuple[int, int],
             regions: Regions = Regions(), counters: Mapping[str, Any] | None = None) -> None:
    """Draw ``detections`` (result-message dicts: ``box`` in source pixels, ``label``, ``score``, and on
    tracked sources ``track_id``/``matched_now``), then the zones and lines with their counters, onto
    ``image`` (the frame scaled by ``scale``; ``source_size`` = the frame's width and height before)."""
    _draw_regions(image, regions, counters or {}, scale, *source_size)
    for detection in detections:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in detection["box"])
        color = color_for(detection)
        coasting = detection.get("matched_now") is False
        cv2.rectangle(image, (x1, y1), (x2, y2), color, 1 if coasting else 2)
        text = f"{detection.get('label', detection.get('class_id'))} {float(detection.get('score', 0.0)):.2f}"
        if detection.get("track_id") is not None:
            text += f" #{detection['track_id']}" + (" (coasting)" if coasting else "")
        _label(image, text, x1, y1, color)
