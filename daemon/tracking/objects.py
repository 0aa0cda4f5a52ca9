"""What a tracker hands on: the objects of one frame, and the summary of a track that ended.

One tracker per source, owned by the thread that runs analytics (the completer): nothing here is shared
between threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TrackState", "TrackedObject", "TrackSummary"]

TrackState = Literal["tentative", "confirmed", "lost"]


@dataclass(slots=True)
class TrackedObject:
    """One track in one frame.

    ``detection``: the index of the frame's detection this track matched (``matched_now``), or None while
    it coasts on its prediction (``state`` ``lost``). ``box``: [x1, y1, x2, y2] in source pixels — the
    detection's box when matched, the Kalman prediction otherwise. ``track_id`` counts from 1 per tracker
    (per source and daemon instance) and is never reused. ``age``: frames since the track started;
    ``hits``: frames it was matched in."""

    track_id: int
    state: TrackState
    matched_now: bool
    detection: int | None
    box: tuple[float, float, float, float]
    class_id: int
    score: float
    age: int
    hits: int


@dataclass(slots=True)
class TrackSummary:
    """A confirmed track that ended: ``reason`` ``lost`` (unmatched for ``tracking.lost_frames``) or
    ``end_of_stream`` (its source ended). Frames are the source's frame indices; times wall-clock
    seconds of the first and last matched frame. ``path``: up to 16 anchor points (bottom centre of the
    box) spread over its matched frames, first and last included."""

    track_id: int
    class_id: int
    reason: Literal["lost", "end_of_stream"]
    first_frame: int
    last_frame: int
    first_seen: float
    last_seen: float
    frames: int
    best_score: float
    path: list[tuple[float, float]]
