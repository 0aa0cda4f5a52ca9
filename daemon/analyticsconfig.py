"""Config sections for camera analytics: ``[tracking]``, ``[snapshots]``, ``[[zones]]`` and ``[[lines]]``.

Defined beside the modules they configure (:mod:`daemon.tracking`, :mod:`daemon.analytics`) for
``daemon.config.Config`` to include, with config.py's rules: unknown keys and NaN/infinity are errors,
every field has bounds. Zones and lines are top-level lists naming their source (not nested in
``[[sources]]``): a SIGHUP that edits a zone then changes no source, so no reader restarts and the
source's tracker keeps its ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["by_source", "TrackingConfig", "SnapshotConfig", "ZoneConfig", "LineConfig", "ANCHORS"]

ANCHORS = ("bottom_center", "center", "top_center")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def by_source(regions: "Iterable[ZoneConfig | LineConfig]") -> dict[str, list]:
    """Zones or lines grouped by the source they name, in config order."""
    grouped: dict[str, list] = {}
    for region in regions:
        grouped.setdefault(region.source, []).append(region)
    return grouped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class TrackingConfig(_Section):
    """ByteTrack per source (detection pipelines). Thresholds as in ByteTrack's paper and Ultralytics'
    ``bytetrack.yaml`` (``track_high_thresh`` 0.5, ``track_low_thresh`` 0.1, ``new_track_thresh`` 0.6,
    ``track_buffer`` 30, ``match_thresh`` 0.8 as a cost = IoU 0.2)."""

    enabled: bool = Field(True, description="Track objects of detection pipelines (per source: sources[].tracking).")
    classes: list[str] | None = Field(None, description="Labels to track; default every label. Others are published untracked.")
    high_threshold: float = Field(0.5, ge=0, le=1, description="Detections at or above this score are matched first.")
    low_threshold: float = Field(0.1, ge=0, le=1, description="Detections between this and high_threshold only extend existing tracks.")
    new_track_threshold: float = Field(0.6, ge=0, le=1, description="An unmatched detection starts a track at or above this score.")
    match_iou: float = Field(0.2, gt=0, le=1, description="Least IoU between a track's predicted box and a detection to match (first round).")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="Least IoU for the second round (low-score detections).")
    confirm_frames: int = Field(2, ge=1, le=1000, description="Matched frames in a row before a track is confirmed (gets counted, ends with a track message).")
    lost_frames: int = Field(30, ge=1, le=100000, description="Frames a confirmed track coasts unmatched before it ends.")
    publish_coasting: bool = Field(False, description="Also publish coasting (lost) tracks' predicted boxes, with matched_now = false.")

    @model_validator(mode="after")
    def _ordered(self) -> "TrackingConfig":
        if self.low_threshold > self.high_threshold:
            raise ValueError("tracking.low_threshold must not be above tracking.high_threshold")
        return self


class SnapshotConfig(_Section):
    """A JPEG of the object in its ``track`` message and its zone and line events: the best picture of
    the track so far, by score times the square root of its box's area (sharp and large beats faint
    and far). Host frames only: an NVDEC source's events come without one."""

    enabled: bool = Field(False, description="Attach snapshots to track and event messages.")
    content: Literal["crop", "frame"] = Field("crop", description="The object's box (with margin), or the whole frame at its best moment.")
    margin: float = Field(0.15, ge=0, le=2, description="Around a crop, as a fraction of the box's width and height.")
    max_width: int = Field(320, ge=16, le=7680, description="Wider pictures are scaled down to this before they are kept.")
    jpeg_quality: int = Field(85, ge=10, le=100)


class _Region(_Section):
    name: str = Field(pattern=_NAME_PATTERN, description="Unique per source; in events, counters and metrics.")
    source: str = Field(min_length=1, description="The id of the source this applies to.")
    coordinates: Literal["pixels", "normalized"] = Field("pixels", description="Points in source pixels, or 0..1 of the frame's width and height.")
    classes: list[str] | None = Field(None, description="Labels that count; default every tracked label.")
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="The point of a box that must be inside (zones) or cross (lines): bottom centre = where an object stands."
    )
    min_frames: int = Field(3, ge=1, le=10000, description="Frames in a row on the new side before an enter, exit or crossing counts (hysteresis).")

    def _check_points(self, points: list[tuple[float, float]]) -> None:
        if self.coordinates == "normalized" and any(not (0 <= v <= 1) for point in points for v in point):
            raise ValueError("normalized coordinates must be within 0..1")
        if self.coordinates == "pixels" and any(v < 0 for point in points for v in point):
            raise ValueError("pixel coordinates must not be negative")


class ZoneConfig(_Region):
    """A polygon: ``enter``/``exit`` events, occupancy, ``dwell`` once a track stayed ``dwell_s``."""

    polygon: list[tuple[float, float]] = Field(min_length=3, max_length=256, description="[[x, y], ...], at least 3 points.")
    dwell_s: float | None = Field(None, gt=0, le=86400, description="A 'dwell' event when a track stays this long (loitering).")

    @model_validator(mode="after")
    def _valid(self) -> "ZoneConfig":
        self._check_points(self.polygon)
        (x0, y0), area = self.polygon[0], 0.0
        for (x1, y1), (x2, y2) in zip(self.polygon[1:], self.polygon[2:]):
            area += (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            raise ValueError("the polygon has no area")
        return self


class LineConfig(_Region):
    """A segment: ``cross`` events, counted per direction. Looking from the first point to the second,
    ``forward`` is a crossing from its left side to its right side (image coordinates, y down)."""

    points: tuple[tuple[float, float], tuple[float, float]] = Field(description="[[x1, y1], [x2, y2]].")
    directions: Literal["both", "forward", "backward"] = Field("both", description="Which crossings produce events.")
    min_frames: int = Field(2, ge=1, le=10000, description="Frames in a row on the new side before a crossing counts (hysteresis).")

    @field_validator("points")
    @classmethod
    def _distinct(cls, points: tuple[tuple[float, float], tuple[float, float]]) -> tuple[tuple[float, float], tuple[float, float]]:
        if points[0] == points[1]:
            raise ValueError("the line's two points are the same")
        return points

    @model_validator(mode="after")
    def _valid(self) -> "LineConfig":
        self._check_points(list(self.points))
        return self
