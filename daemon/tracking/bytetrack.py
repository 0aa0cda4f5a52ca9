"""ByteTrack (Zhang et al., 2022) on numpy: one tracker per source.

Why ByteTrack: it needs no appearance model (no second network per box on a Jetson), and its one idea —
match the low-score detections too, but only to tracks that already exist — keeps a track through
occlusion and motion blur, where a detector's score drops, without letting those detections start false
tracks.

Per inferred frame (:meth:`ByteTracker.update`):

1. predict every track one frame (Kalman, :mod:`daemon.tracking.kalman`);
2. high-score detections (``score >= high_threshold``) to confirmed and lost tracks, cost 1 - IoU,
   a match needs IoU >= ``match_iou``;
3. low-score detections (``low_threshold <= score < high_threshold``) to the confirmed and lost tracks
   left, IoU >= ``low_match_iou`` (stricter: a low score is weak evidence; a lost track may take one,
   as Roboflow's ByteTrack lets it: an object coming out of occlusion is often detected weakly first);
4. tentative tracks to the high detections left (IoU >= ``match_iou``); a tentative track that misses is
   dropped at once: it was never published as a track, so it never ends as one;
5. high detections still left with ``score >= new_track_threshold`` start tentative tracks;
6. duplicates (ByteTrack's ``remove_duplicate_stracks``): a matched and a lost track of the same class
   whose boxes overlap at IoU > ``DUPLICATE_IOU`` follow one object; the younger one goes (the older
   takes over its detection when the younger had it). Without this, two tracks born on one person
   while it was briefly lost take turns at its detections and its id flips back and forth.

Matches only pair a track and a detection of the same class. A tentative track is confirmed after
``confirm_frames`` matched frames in a row. A confirmed track that misses turns ``lost`` and coasts on
its prediction for up to ``lost_frames`` unmatched inferred frames; at the next miss it ends (a
:class:`TrackSummary` with reason ``lost``).

Frames the model skipped (the daemon's ``infer_every``) go to :meth:`ByteTracker.predict`: the motion
model moves on one frame, nothing is matched, no state changes, and they do not count as misses — a
track's patience is measured in frames the detector actually looked at.

Single-threaded: the source's completer thread owns its tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analyticsconfig import TrackingConfig
from .assignment import match_arrays
from .kalman import BatchKalman, xyxy_to_xyah
from .objects import TrackedObject, TrackState, TrackSummary

__all__ = ["ByteTracker", "TrackerStep", "PATH_POINTS"]

PATH_POINTS = 16
"""At most this many anchor points per TrackSummary.path."""

DUPLICATE_IOU = 0.85
"""ByteTrack's duplicate test (its IoU distance < 0.15)."""

_TENTATIVE, _CONFIRMED, _LOST = 0, 1, 2
_STATE_NAMES: tuple[TrackState, ...] = ("tentative", "confirmed", "lost")
_NO_MATCH = 2.0  # a cost above every max_cost (1 - IoU threshold, threshold > 0)


@dataclass(slots=True)
class TrackerStep:
    """What one frame produced: the objects to publish, and the tracks that ended at this frame."""

    objects: list[TrackedObject] = field(default_factory=list)
    ended: list[TrackSummary] = field(default_factory=list)


class _Track:
    """Everything about one track except its motion state (a row of the tracker's BatchKalman)."""

    __slots__ = (
        "track_id", "class_id", "state", "first_frame", "last_frame", "first_seen", "last_seen", "hits",
        "misses", "score", "best_score", "box", "path", "path_step", "last_point",
    )

    def __init__(self, track_id: int, class_id: int, box: tuple[float, float, float, float], score: float, frame: int, timestamp: float, state: int):
        self.track_id = track_id
        self.class_id = class_id
        self.state = state
        self.first_frame = self.last_frame = frame
        self.first_seen = self.last_seen = timestamp
        self.hits = 1
        self.misses = 0
        self.score = self.best_score = score
        self.box = box
        self.path: list[tuple[float, float]] = []
        self.path_step = 1  # keep every path_step-th matched frame's point; doubles when the list is full
        self.last_point = _anchor(box)
        self.path.append(self.last_point)

    def matched(self, box: tuple[float, float, float, float], score: float, frame: int, timestamp: float) -> None:
        self.hits += 1
        self.misses = 0
        self.last_frame = frame
        self.last_seen = timestamp
        self.score = score
        if score > self.best_score:
            self.best_score = score
        self.box = box
        self.last_point = _anchor(box)
        if (self.hits - 1) % self.path_step == 0:
            self.path.append(self.last_point)
            if len(self.path) >= PATH_POINTS:  # keep one place free for the last point
                self.path = self.path[::2]
                self.path_step *= 2

    def summary(self, reason: str) -> TrackSummary:
        path = list(self.path)
        if (self.hits - 1) % self.path_step != 0:  # the last matched point was not sampled: add it
            path.append(self.last_point)
        return TrackSummary(
            track_id=self.track_id, class_id=self.class_id, reason=reason,  # type: ignore[arg-type]
            first_frame=self.first_frame, last_frame=self.last_frame, first_seen=self.first_seen,
            last_seen=self.last_seen, frames=self.hits, best_score=self.best_score, path=path,
        )


def _anchor(box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Bottom centre: where an object stands, the point zones and lines test by default."""
    return ((box[0] + box[2]) * 0.5, box[3])


def iou_matrix(a: np.ndarray, b: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """[len(a), len(b)] IoU of xyxy boxes (0 for boxes without area, and where ``allowed`` [len(a),
    len(b)] bool is False). Most pairs of a frame do not
    overlap, so the areas, the union and the division (slow: the bulk of the time at a few hundred
    boxes) are computed only for the pairs that do."""
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a.T)
    bx1, by1, bx2, by2 = np.ascontiguousarray(b.T)
    w = np.minimum(ax2[:, None], bx2)
    w -= np.maximum(ax1[:, None], bx1)
    h = np.minimum(ay2[:, None], by2)
    h -= np.maximum(ay1[:, None], by1)
    hit = (w > 0) & (h > 0)
    if allowed is not None:
        hit &= allowed
    overlap = np.flatnonzero(hit)  # 10x faster than a 2-D np.nonzero
    iou = np.zeros(w.shape)
    if len(overlap):
        rows, cols = np.divmod(overlap, w.shape[1])
        inter = w.ravel()[overlap] * h.ravel()[overlap]
        union = ((ax2 - ax1) * (ay2 - ay1))[rows] + ((bx2 - bx1) * (by2 - by1))[cols] - inter
        iou[rows, cols] = inter / np.maximum(union, 1e-12)
    return iou


class ByteTracker:
    """Tracks of one source. ``tracked_classes``: the class ids to track (None: every class); detections
    of other classes are left alone — not matched, not starting tracks."""

    def __init__(self, config: TrackingConfig, tracked_classes: set[int] | None = None):
        self.config = config
        self.tracked_classes = None if tracked_classes is None else np.array(sorted(tracked_classes), dtype=np.int64)
        self._tracks: list[_Track] = []
        self._kalman = BatchKalman()
        self._next_id = 1

    def __len__(self) -> int:
        """Tracks held (tentative, confirmed and lost)."""
        return len(self._tracks)

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, frame_index: int, timestamp: float) -> TrackerStep:
        """One inferred frame: ``boxes`` [N, 4] xyxy source pixels, ``scores`` [N], ``class_ids`` [N]."""
        cfg = self.config
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(class_ids)):
            raise ValueError(f"boxes, scores and class_ids differ in length: {len(boxes)}, {len(scores)}, {len(class_ids)}")

        tracks = self._tracks
        states = np.fromiter((t.state for t in tracks), dtype=np.int8, count=len(tracks))
        self._kalman.predict(freeze_height=states == _LOST)

        usable = scores >= cfg.low_threshold
        if self.tracked_classes is not None:
            usable &= np.isin(class_ids, self.tracked_classes)
        candidates = np.flatnonzero(usable)  # detection indices, into the input arrays
        high = scores[candidates] >= cfg.high_threshold

        iou = np.zeros((len(tracks), len(candidates)))
        if len(tracks) and len(candidates):
            track_classes = np.fromiter((t.class_id for t in tracks), dtype=np.int64, count=len(tracks))
            same_class = track_classes[:, None] == class_ids[candidates][None, :]
            iou = iou_matrix(self._kalman.boxes(), boxes[candidates], same_class)

        pairs: list[tuple[np.ndarray, np.ndarray]] = []  # per round: (track rows, candidate columns)
        rows_left = np.flatnonzero(states != _TENTATIVE)
        cols_high = np.flatnonzero(high)
        rows_left, cols_high = _associate(iou, rows_left, cols_high, cfg.match_iou, pairs)
        _associate(iou, rows_left, np.flatnonzero(~high), cfg.low_match_iou, pairs)
        _, cols_high = _associate(iou, np.flatnonzero(states == _TENTATIVE), cols_high, cfg.match_iou, pairs)

        objects: list[TrackedObject] = []
        ended: list[TrackSummary] = []
        det_of_row = [-1] * len(tracks)
        box_list: list[list[float]] = []
        score_list: list[float] = []
        if pairs:
            rows = np.concatenate([r for r, _ in pairs])
            dets = candidates[np.concatenate([c for _, c in pairs])]
            self._kalman.update(rows, xyxy_to_xyah(boxes[dets]))
            for k, row in enumerate(rows.tolist()):
                det_of_row[row] = k
            box_list = boxes[dets].tolist()
            score_list = scores[dets].tolist()
            det_list = dets.tolist()
        dropped = self._duplicates(states, det_of_row, boxes, dets if pairs else None)

        keep = np.ones(len(tracks), dtype=bool)
        predicted: list[list[float]] | None = None
        confirm_frames, lost_frames = cfg.confirm_frames, cfg.lost_frames
        for row, track in enumerate(tracks):
            if row in dropped:
                keep[row] = False
                if track.state != _TENTATIVE:
                    ended.append(track.summary("lost"))
                continue
            k = det_of_row[row]
            if k >= 0:
                box = tuple(box_list[k])
                track.matched(box, score_list[k], frame_index, timestamp)
                if track.state == _LOST or track.hits >= confirm_frames:  # a tentative track's hits are in a row
                    track.state = _CONFIRMED
                objects.append(TrackedObject(
                    track.track_id, _STATE_NAMES[track.state], True, det_list[k], box, track.class_id,  # type: ignore[arg-type]
                    track.score, frame_index - track.first_frame + 1, track.hits,
                ))
                continue
            if track.state == _TENTATIVE:
                keep[row] = False  # never published as a track: dropped without a summary
                continue
            track.misses += 1
            if track.misses > lost_frames:
                keep[row] = False
                ended.append(track.summary("lost"))
                continue
            track.state = _LOST
            if predicted is None:
                predicted = self._kalman.boxes().tolist()
            objects.append(self._object(track, None, tuple(predicted[row]), frame_index))

        if not keep.all():
            self._kalman.keep(keep)
            self._tracks = tracks = [t for t, k in zip(tracks, keep.tolist()) if k]

        new_cols = cols_high[scores[candidates[cols_high]] >= cfg.new_track_threshold]
        if len(new_cols):
            dets = candidates[new_cols]
            self._kalman.add(xyxy_to_xyah(boxes[dets]))
            state = _CONFIRMED if cfg.confirm_frames <= 1 else _TENTATIVE
            for det, box, score, class_id in zip(dets.tolist(), boxes[dets].tolist(), scores[dets].tolist(), class_ids[dets].tolist()):
                track = _Track(self._next_id, class_id, tuple(box), score, frame_index, timestamp, state)
                self._next_id += 1
                tracks.append(track)
                objects.append(self._object(track, det, track.box, frame_index))
        return TrackerStep(objects, ended)

    def _duplicates(self, states: np.ndarray, det_of_row: list[int], boxes: np.ndarray, dets: np.ndarray | None) -> set[int]:
        """Rows to drop as duplicates (step 6). When the younger of a pair had this frame's detection, the
        older one takes it (``det_of_row`` and its Kalman state are updated here)."""
        if dets is None:
            return set()
        tracks = self._tracks
        matched = [row for row, k in enumerate(det_of_row) if k >= 0]
        lost = [row for row, k in enumerate(det_of_row) if k < 0 and states[row] != _TENTATIVE]
        if not matched or not lost:
            return set()
        current = self._kalman.boxes()
        same_class = np.array([[tracks[m].class_id == tracks[n].class_id for n in lost] for m in matched])
        overlap = iou_matrix(current[matched], current[lost], same_class)
        dropped: set[int] = set()
        for i, j in zip(*np.nonzero(overlap > DUPLICATE_IOU)):
            m, n = matched[i], lost[j]
            if m in dropped or n in dropped:
                continue
            if tracks[n].first_frame < tracks[m].first_frame:  # the lost one is older: it takes the detection
                k = det_of_row[m]
                self._kalman.update(np.array([n]), xyxy_to_xyah(boxes[dets[k : k + 1]]))
                det_of_row[n], det_of_row[m] = k, -1
                dropped.add(m)
            else:
                dropped.add(n)
        return dropped

    def predict(self, frame_index: int, timestamp: float) -> TrackerStep:
        """A frame the model did not run on: every track moves on one frame; the confirmed and lost ones
        are returned at their predicted boxes (``matched_now`` False), tentative ones are not. No state
        changes and no miss is counted."""
        self._kalman.predict(freeze_height=np.fromiter((t.state == _LOST for t in self._tracks), dtype=bool, count=len(self._tracks)))
        step = TrackerStep()
        if not self._tracks:
            return step
        predicted = self._kalman.boxes().tolist()
        for row, track in enumerate(self._tracks):
            if track.state != _TENTATIVE:
                step.objects.append(self._object(track, None, tuple(predicted[row]), frame_index))
        return step

    def finish(self, timestamp: float) -> list[TrackSummary]:
        """The source ended: every confirmed and lost track ends (``end_of_stream``), tentative ones are
        dropped; the tracker is empty afterwards (ids still never repeat)."""
        ended = [t.summary("end_of_stream") for t in self._tracks if t.state != _TENTATIVE]
        self._tracks = []
        self._kalman = BatchKalman()
        return ended

    @staticmethod
    def _object(track: _Track, detection: int | None, box: tuple[float, ...], frame_index: int) -> TrackedObject:
        return TrackedObject(
            track_id=track.track_id, state=_STATE_NAMES[track.state], matched_now=detection is not None,
            detection=detection, box=box, class_id=track.class_id, score=track.score,  # type: ignore[arg-type]
            age=frame_index - track.first_frame + 1, hits=track.hits,
        )


def _associate(iou: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Match ``rows`` to ``cols`` of ``iou`` (IoU >= ``threshold``), append the matched (rows, cols)
    (global indices) to ``pairs``; returns the rows and columns left unmatched."""
    if len(rows) == 0 or len(cols) == 0:
        return rows, cols
    sub = iou[np.ix_(rows, cols)]
    cost = np.where(sub >= threshold, 1.0 - sub, _NO_MATCH)
    r, c = match_arrays(cost, 1.0 - threshold)
    if len(r) == 0:
        return rows, cols
    pairs.append((rows[r], cols[c]))
    free_rows = np.ones(len(rows), dtype=bool)
    free_cols = np.ones(len(cols), dtype=bool)
    free_rows[r] = False
    free_cols[c] = False
    return rows[free_rows], cols[free_cols]
