"""Event snapshots: per live track, the best picture of it so far, attached (JPEG) to its events and to
its ``track`` message when it ends.

"Best" is score × √area: a confident, large view of the object beats a faint or distant one, the same
rule Frigate's best snapshot uses in spirit. The completer keeps one small picture per live track (a
crop scaled to ``max_width``, or the scaled frame), copies it only when a track improves, and encodes it
only when a message needs it (then cached until it changes). Tracks that are gone are forgotten at
once: memory is bounded by the live tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..analyticsconfig import SnapshotConfig
from ..tracking.objects import TrackedObject

__all__ = ["BestShots", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An encoded picture of one track, for a message's payload part."""

    jpeg: bytes
    width: int
    height: int
    frame_index: int
    score: float


class _Shot:
    __slots__ = ("quality", "image", "frame_index", "score", "encoded")

    def __init__(self, quality: float, image: np.ndarray, frame_index: int, score: float):
        self.quality, self.image, self.frame_index, self.score = quality, image, frame_index, score
        self.encoded: Snapshot | None = None


class BestShots:
    """One source's best pictures, by track id (the completer's alone)."""

    def __init__(self, config: SnapshotConfig):
        self._config = config
        self._shots: dict[int, _Shot] = {}

    def __len__(self) -> int:
        return len(self._shots)

    def update(self, objects: list[TrackedObject], image: np.ndarray, frame_index: int) -> None:
        """Look at this frame's matched objects (``image``: its BGR pixels) and keep what beats a track's best."""
        height, width = image.shape[:2]
        for obj in objects:
            if not obj.matched_now:  # a prediction: not a picture of the object
                continue
            x1, y1, x2, y2 = obj.box
            area = max(0.0, min(x2, width) - max(x1, 0.0)) * max(0.0, min(y2, height) - max(y1, 0.0))
            quality = float(obj.score) * area**0.5
            shot = self._shots.get(obj.track_id)
            if quality <= 0 or (shot is not None and quality <= shot.quality):
                continue
            picture = self._picture(image, obj.box)
            if picture is not None:
                self._shots[obj.track_id] = _Shot(quality, picture, frame_index, float(obj.score))

    def _picture(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        config = self._config
        if config.content == "crop":
            x1, y1, x2, y2 = box
            dx, dy = (x2 - x1) * config.margin, (y2 - y1) * config.margin
            height, width = image.shape[:2]
            left, top = int(max(0, x1 - dx)), int(max(0, y1 - dy))
            right, bottom = int(min(width, x2 + dx + 1)), int(min(height, y2 + dy + 1))
            if right - left < 2 or bottom - top < 2:
                return None
            image = image[top:bottom, left:right]
        if image.shape[1] > config.max_width:
            scale = config.max_width / image.shape[1]
            return cv2.resize(image, (config.max_width, max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        return np.array(image, copy=True)  # a view of the frame would keep the whole frame alive

    def snapshot(self, track_id: int | None) -> Snapshot | None:
        """The track's best picture as JPEG (encoded once per improvement); None when there is none."""
        shot = self._shots.get(track_id) if track_id is not None else None
        if shot is None:
            return None
        if shot.encoded is None:
            ok, jpeg = cv2.imencode(".jpg", shot.image, [cv2.IMWRITE_JPEG_QUALITY, self._config.jpeg_quality])
            if not ok:
                return None
            shot.encoded = Snapshot(jpeg.tobytes(), shot.image.shape[1], shot.image.shape[0], shot.frame_index, round(shot.score, 4))
        return shot.encoded

    def keep_only(self, live: set[int]) -> None:
        """Forget tracks that are gone (ended, or tentative ones dropped)."""
        for track_id in [t for t in self._shots if t not in live]:
            del self._shots[track_id]
