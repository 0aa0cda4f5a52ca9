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
from itertools import compress

import numpy as np

from ..analyticsconfig import TrackingConfig
from .assignment import match_arrays
from .kalman import BatchKalman, xyxy_to_xyah
from .objects import TrackedObject, TrackState, TrackSummary

__all__ = ["ByteTracker", "FrameDetections", "TrackerStep", "PATH_POINTS"]

PATH_POINTS = 16
"""At most this many anchor points per TrackSummary.path."""

DUPLICATE_IOU = 0.85
"""ByteTrack's duplicate test (its IoU distance < 0.15)."""

_TENTATIVE, _CONFIRMED, _LOST = 0, 1, 2
_STATE_NAMES: tuple[TrackState, ...] = ("tentative", "confirmed", "lost")
_STATE_NAME_ARRAY = np.array(_STATE_NAMES, dtype=object)  # state codes -> names in one indexing
_NO_MATCH = 2.0  # a cost above every max_cost (1 - IoU threshold, threshold > 0)
_DENSE_PAIRS = 12000
"""Up to this many track x detection pairs, overlaps are found on the full matrix; above it a sweep
along x visits only the pairs that can overlap (a few per track): its fixed cost is higher, but it
grows with the boxes, not their square (measured: even at ~110 x 110, 7x cheaper at 200 x 200)."""


@dataclass(slots=True)
class TrackerStep:
    """What one frame produced: the objects to publish, and the tracks that ended at this frame."""

    objects: list[TrackedObject] = field(default_factory=list)
    ended: list[TrackSummary] = field(default_factory=list)


class _Tracks:
    """Everything about the tracks except their motion state, as arrays parallel to the rows of the
    tracker's BatchKalman (row i of each is track i).

    Why arrays and not an object per track: each inferred frame reads every track's state and class
    (the association rounds), updates the matched ones (hits, score, box) and publishes every one (a
    TrackedObject each). With an object per track that was a Python loop of attribute accesses per
    track, most of a frame's cost at a few dozen objects; on arrays each step is one numpy call for
    all tracks. Only the path stays a Python list per track: it changes in a few tracks per frame.
    """

    __slots__ = (
        "ids", "states", "classes", "groups", "keys", "first_frame", "last_frame", "first_seen", "last_seen", "hits",
        "misses", "score", "best_score", "boxes", "path_step", "paths",
    )

    def __init__(self) -> None:
        self.ids, self.classes = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.groups = np.zeros(0, dtype=np.int64)  # the source of each track (one tracker may hold several)
        self.keys = np.zeros(0, dtype=np.int64)  # (group, class) in one number: only equal keys may match
        self.first_frame, self.last_frame = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.hits, self.misses = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.path_step = np.zeros(0, dtype=np.int64)  # keep every path_step-th matched point; doubles when the path is full
        self.states = np.zeros(0, dtype=np.int8)
        self.first_seen, self.last_seen = np.zeros(0), np.zeros(0)
        self.score, self.best_score = np.zeros(0), np.zeros(0)
        self.boxes = np.zeros((0, 4))  # the last matched box: published while matched, summaries' last point
        self.paths: list[list[tuple[float, float]]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: np.ndarray, classes: np.ndarray, groups: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
            frames: np.ndarray, timestamps: np.ndarray, state: int) -> None:
        """New tracks at the end (rows follow the Kalman filter's :meth:`BatchKalman.add`); ``frames`` and
        ``timestamps`` per new track (its source's frame)."""
        count = len(ids)
        self.ids = np.concatenate([self.ids, ids])
        self.states = np.concatenate([self.states, np.full(count, state, dtype=np.int8)])
        self.classes = np.concatenate([self.classes, classes])
        self.groups = np.concatenate([self.groups, groups])
        self.keys = np.concatenate([self.keys, _keys(groups, classes)])
        self.first_frame = np.concatenate([self.first_frame, frames])
        self.last_frame = np.concatenate([self.last_frame, frames])
        self.first_seen = np.concatenate([self.first_seen, timestamps])
        self.last_seen = np.concatenate([self.last_seen, timestamps])
        self.hits = np.concatenate([self.hits, np.ones(count, dtype=np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(count, dtype=np.int64)])
        self.score = np.concatenate([self.score, scores])
        self.best_score = np.concatenate([self.best_score, scores])
        self.boxes = np.concatenate([self.boxes, boxes])
        self.path_step = np.concatenate([self.path_step, np.ones(count, dtype=np.int64)])
        self.paths.extend([point] for point in _anchors(boxes))

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (as :meth:`BatchKalman.keep`)."""
        for name in self.__slots__[:-1]:  # every array; "paths", the last slot, is a list
            setattr(self, name, getattr(self, name)[mask])
        self.paths = list(compress(self.paths, mask.tolist()))

    def matched(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray, frame: np.ndarray, timestamp: np.ndarray) -> None:
        """Tracks ``rows`` (distinct) matched detections ``boxes`` [M, 4] / ``scores`` [M] in their frames
        (``frame``, ``timestamp`` [M]: each row's source's frame)."""
        hits = self.hits[rows] + 1
        self.hits[rows] = hits
        self.misses[rows] = 0
        self.last_frame[rows] = frame
        self.last_seen[rows] = timestamp
        self.score[rows] = scores
        self.best_score[rows] = np.maximum(self.best_score[rows], scores)
        self.boxes[rows] = boxes
        sampled = (hits - 1) % self.path_step[rows] == 0
        if sampled.any():
            paths, path_step = self.paths, self.path_step
            for row, point in zip(rows[sampled].tolist(), _anchors(boxes[sampled])):
                path = paths[row]
                path.append(point)
                if len(path) >= PATH_POINTS:  # keep one place free for the last point
                    paths[row] = path[::2]
                    path_step[row] *= 2

    def summary(self, row: int, reason: str) -> TrackSummary:
        path = list(self.paths[row])
        hits = int(self.hits[row])
        if (hits - 1) % int(self.path_step[row]) != 0:  # the last matched point was not sampled: add it
            path.extend(_anchors(self.boxes[row : row + 1]))
        return TrackSummary(
            track_id=int(self.ids[row]), class_id=int(self.classes[row]), reason=reason,  # type: ignore[arg-type]
            first_frame=int(self.first_frame[row]), last_frame=int(self.last_frame[row]),
            first_seen=float(self.first_seen[row]), last_seen=float(self.last_seen[row]), frames=hits,
            best_score=float(self.best_score[row]), path=path,
        )

    def objects(self, rows: np.ndarray | slice, detections: np.ndarray, boxes: np.ndarray, frame_index: int | np.ndarray) -> list[TrackedObject]:
        """TrackedObjects of ``rows``, in row order: ``detections`` their detection indices (-1: coasting,
        ``matched_now`` False), ``boxes`` [len(rows), 4] the boxes to publish. Built column by column:
        one ``tolist`` per field instead of attribute reads per track."""
        matched = detections >= 0
        detection_list: list[int | None] = detections.tolist()
        if not matched.all():
            detection_list = [d if d >= 0 else None for d in detection_list]
        return list(map(
            TrackedObject, self.ids[rows].tolist(), _STATE_NAME_ARRAY[self.states[rows]].tolist(), matched.tolist(),
            detection_list, map(tuple, boxes.tolist()), self.classes[rows].tolist(), self.score[rows].tolist(),
            (frame_index + 1 - self.first_frame[rows]).tolist(), self.hits[rows].tolist(),
        ))


def _keys(groups: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """One int64 per (group, class): tracks and detections may match only at equal keys, so one
    association over several sources' frames never pairs two sources."""
    return (np.asarray(groups, dtype=np.int64) << 32) | (np.asarray(classes, dtype=np.int64) & 0xFFFFFFFF)


def _anchors(boxes: np.ndarray) -> list[tuple[float, float]]:
    """Bottom centres of [N, 4] boxes: where an object stands, the point zones and lines test by default."""
    return list(zip(((boxes[:, 0] + boxes[:, 2]) * 0.5).tolist(), boxes[:, 3].tolist()))


def iou_matrix(a: np.ndarray, b: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """[len(a), len(b)] IoU of xyxy boxes (0 for boxes without area, and where ``allowed`` [len(a),
    len(b)] bool is False). Most pairs of a frame do not
    overlap, so the areas, the union and the division (slow: the bulk of the time at a few hundred
    boxes) are computed only for the pairs that do."""
    w, h = _intersections(a, b)
    hit = (w > 0) & (h > 0)
    if allowed is not None:
        hit &= allowed
    overlap = np.flatnonzero(hit)  # 10x faster than a 2-D np.nonzero
    iou = np.zeros(w.shape)
    if len(overlap):
        rows, cols = np.divmod(overlap, w.shape[1])
        iou[rows, cols] = _iou(a, b, rows, cols, w.ravel()[overlap] * h.ravel()[overlap])
    return iou


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[len(a), len(b)] width and height of every pair's intersection (not positive where none)."""
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a.T)
    bx1, by1, bx2, by2 = np.ascontiguousarray(b.T)
    w = np.minimum(ax2[:, None], bx2)
    w -= np.maximum(ax1[:, None], bx1)
    h = np.minimum(ay2[:, None], by2)
    h -= np.maximum(ay1[:, None], by1)
    return w, h


def _iou(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray, inter: np.ndarray) -> np.ndarray:
    """IoU of the pairs (a[rows], b[cols]) whose intersection areas are ``inter``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[rows] + area_b[cols] - inter, 1e-12)


def overlapping_pairs(a: np.ndarray, b: np.ndarray, a_classes: np.ndarray, b_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of xyxy boxes ``a`` [K, 4] and ``b`` [N, 4] of the same class that overlap: ``(rows,
    cols, iou)``, rows ascending; the same IoU values as :func:`iou_matrix`, bit for bit.

    Why pairs and not a matrix: a box overlaps a few others, so at a few hundred boxes nearly all of a
    K x N matrix is zeros, and each association round would index and threshold all of it again."""
    if len(a) * len(b) > _DENSE_PAIRS:
        pairs = _sweep_pairs(a, b)
        if pairs is not None:
            rows, cols = pairs
            w = np.minimum(a[rows, 2], b[cols, 2]) - np.maximum(a[rows, 0], b[cols, 0])
            h = np.minimum(a[rows, 3], b[cols, 3]) - np.maximum(a[rows, 1], b[cols, 1])
            hit = np.flatnonzero((w > 0) & (h > 0) & (a_classes[rows] == b_classes[cols]))
            rows, cols = rows[hit], cols[hit]
            return rows, cols, _iou(a, b, rows, cols, w[hit] * h[hit])
    w, h = _intersections(a, b)
    hit = (w > 0) & (h > 0) & (a_classes[:, None] == b_classes)
    overlap = np.flatnonzero(hit)  # 10x faster than a 2-D np.nonzero
    rows, cols = np.divmod(overlap, len(b))
    return rows, cols, _iou(a, b, rows, cols, w.ravel()[overlap] * h.ravel()[overlap])


def _sweep_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Every pair (rows ascending) that may overlap along x — a superset of the overlapping ones:
    ``b`` sorted by x1, a box of ``a`` can only overlap those from x1 > its x1 - the widest box of
    ``b`` to x1 < its x2. None when a box of ``b`` is not finite (the dense path handles those)."""
    widest = float(np.max(b[:, 2] - b[:, 0]))
    if not np.isfinite(widest):
        return None
    order = np.argsort(b[:, 0], kind="stable")
    sorted_x1 = b[order, 0]
    slack = 1.0 + 1e-9 * float(np.max(np.abs(sorted_x1[[0, -1]])))  # far more than any rounding above
    first = np.searchsorted(sorted_x1, a[:, 0] - widest - slack, side="left")
    end = np.searchsorted(sorted_x1, a[:, 2], side="left")
    counts = np.maximum(end - first, 0)
    rows = np.repeat(np.arange(len(a)), counts)
    # position k of the pairs is sorted index first[row] + (k - the row's first pair)
    offsets = np.repeat(first - (np.cumsum(counts) - counts), counts)
    return rows, order[np.arange(len(rows)) + offsets]


@dataclass(slots=True)
class FrameDetections:
    """One source's frame for :meth:`ByteTracker.step`: its detections (``boxes`` [N, 4] xyxy source
    pixels, ``scores`` [N], ``class_ids`` [N]) or, with ``inferred`` False, a frame the model skipped."""

    group: int
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    frame_index: int
    timestamp: float
    inferred: bool = True

    @classmethod
    def skipped(cls, group: int, frame_index: int, timestamp: float) -> "FrameDetections":
        """A frame the model did not run on (``infer_every``): no detections, the tracks only move on."""
        return cls(group, _NO_BOXES, _NO_SCORES, _NO_CLASSES, frame_index, timestamp, inferred=False)


class ByteTracker:
    """Tracks of one or several sources ("groups"). ``tracked_classes``: the class ids to track (None:
    every class); detections of other classes are left alone — not matched, not starting tracks.

    Why one tracker for several sources: a frame's tracking is a few dozen numpy calls whatever the
    number of boxes, about 0.1 ms; a GPU serving thousands of frames a second would spend whole cores
    on that fixed cost, frame by frame. :meth:`step` takes one frame of each of many sources and runs
    those calls once for all of them: tracks and detections carry their source in their match key, so
    sources never mix, and each source's result is the one a tracker of its own would give (tested).
    Track ids count from ``first_id`` across all sources: unique per tracker, never reused."""

    def __init__(self, config: TrackingConfig, tracked_classes: set[int] | None = None, first_id: int = 1, id_stride: int = 1):
        """``id_stride``: ids go ``first_id``, ``first_id + id_stride``, ...: trackers in N processes
        (``daemon.analytics_processes``) take strides of N from different first ids, so no two of them
        ever give out the same id."""
        if id_stride < 1:
            raise ValueError("id_stride must be at least 1")
        self.config = config
        self._id_stride = id_stride
        self.tracked_classes = None if tracked_classes is None else np.array(sorted(tracked_classes), dtype=np.int64)
        self._tracks = _Tracks()
        self._kalman = BatchKalman()
        self._next_id = first_id

    def __len__(self) -> int:
        """Tracks held (tentative, confirmed and lost)."""
        return len(self._tracks)

    @property
    def next_id(self) -> int:
        """The id the next track gets (a tracker replacing this one starts there)."""
        return self._next_id

    # -- one source --------------------------------------------------------------------------------------
    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, frame_index: int, timestamp: float) -> TrackerStep:
        """One inferred frame of a single-source tracker (group 0)."""
        return self.step([FrameDetections(0, boxes, scores, class_ids, frame_index, timestamp)])[0]

    def predict(self, frame_index: int, timestamp: float) -> TrackerStep:
        """A frame of a single-source tracker (group 0) the model did not run on (see :meth:`step`)."""
        return self.step([FrameDetections.skipped(0, frame_index, timestamp)])[0]

    def finish(self, timestamp: float) -> list[TrackSummary]:
        """A single-source tracker's source ended (see :meth:`finish_group`)."""
        return self.finish_group(0, timestamp)

    # -- several sources -------------------------------------------------------------------------------
    def step(self, frames: list[FrameDetections]) -> list[TrackerStep]:
        """One frame each of several sources (at most one per group), in one pass; a step per frame, in
        order. An inferred frame runs steps 1-6; a skipped one (``inferred`` False) only moves its
        source's tracks one frame: its confirmed and lost tracks are returned at their predicted boxes
        (``matched_now`` False), tentative ones are not, no state changes and no miss is counted — a
        track's patience is measured in frames the detector looked at. Tracks of sources without a frame
        here are left as they are."""
        cfg = self.config
        if len(frames) > 1 and len({frame.group for frame in frames}) != len(frames):
            raise ValueError("a step takes at most one frame per group")
        tracks = self._tracks
        states = tracks.states  # this step's states until the bookkeeping below changes them
        group_frame = {frame.group: frame for frame in frames}
        inferred = [frame for frame in frames if frame.inferred]
        if len(frames) == 1:  # one source's frame (a tracker per source, or a batch of one): no set lookups
            present = tracks.groups == frames[0].group
            in_inferred = present if inferred else np.zeros(len(tracks), dtype=bool)
        else:
            present = np.isin(tracks.groups, np.fromiter(group_frame, dtype=np.int64, count=len(group_frame)))
            inferred_groups = np.fromiter((frame.group for frame in inferred), dtype=np.int64, count=len(inferred))
            in_inferred = np.isin(tracks.groups, inferred_groups) if len(inferred) else np.zeros(len(tracks), dtype=bool)
        every = bool(present.all())
        self._kalman.predict(freeze_height=states == _LOST, rows=None if every else np.flatnonzero(present))
        boxes, scores, class_ids, det_groups, offsets = _concatenate(inferred)

        usable = scores >= cfg.low_threshold
        if self.tracked_classes is not None:
            usable &= np.isin(class_ids, self.tracked_classes)
        candidates = np.flatnonzero(usable)  # detection indices, into the concatenated arrays
        cand_boxes, cand_scores = boxes[candidates], scores[candidates]
        cand_keys = _keys(det_groups[candidates], class_ids[candidates])
        high = cand_scores >= cfg.high_threshold

        column_of = np.full(len(tracks), -1, dtype=np.intp)  # per track row: its candidate column, or -1
        free = np.ones(len(candidates), dtype=bool)  # candidate columns no track took
        if len(tracks) and len(candidates):
            pairs = overlapping_pairs(self._kalman.boxes(), cand_boxes, tracks.keys, cand_keys)
            tentative = states == _TENTATIVE
            _associate(pairs, ~tentative, high, cfg.match_iou, column_of, free)
            _associate(pairs, ~tentative, ~high, cfg.low_match_iou, column_of, free)
            _associate(pairs, tentative, high, cfg.match_iou, column_of, free)
            paired = np.flatnonzero(column_of >= 0)
            if len(paired):
                all_paired = len(paired) == len(tracks)  # most frames of one source: update them all in place
                self._kalman.update(None if all_paired else paired, xyxy_to_xyah(cand_boxes[column_of[paired]]))
        dropped = self._duplicates(states, column_of, cand_boxes)

        matched = column_of >= 0
        if dropped is not None:
            matched &= ~dropped  # a dropped track may hold a detection it took from a younger duplicate
        missed = ~matched & (states != _TENTATIVE) & in_inferred  # an unmatched tentative track is dropped without a summary
        if dropped is not None:
            missed &= ~dropped
        misses = tracks.misses
        misses[missed] += 1
        expired = missed & (misses > cfg.lost_frames)
        ending = expired if dropped is None else expired | (dropped & (states != _TENTATIVE))
        ended_rows = np.flatnonzero(ending)
        ended = [(int(tracks.groups[row]), tracks.summary(row, "lost")) for row in ended_rows.tolist()]

        rows = np.flatnonzero(matched)
        if len(rows):
            columns = column_of[rows]
            frame_of, time_of = _frame_columns(tracks.groups[rows], group_frame)
            tracks.matched(rows, cand_boxes[columns], cand_scores[columns], frame_of, time_of)
            # a tentative track's hits are in a row
            confirm = rows[(states[rows] == _LOST) | (tracks.hits[rows] >= cfg.confirm_frames)]
            states[confirm] = _CONFIRMED
        coasting = missed & ~expired
        states[coasting] = _LOST

        keep = matched | coasting | ~in_inferred  # the tracks of skipped frames' and absent sources stay
        detections = np.full(len(tracks), -1, dtype=np.int64)
        detections[rows] = candidates[column_of[rows]]
        if not keep.all():
            self._kalman.keep(keep)
            tracks.keep(keep)
            detections = detections[keep]

        new_columns = np.flatnonzero(high & free & (cand_scores >= cfg.new_track_threshold))
        if len(new_columns):
            new = candidates[new_columns]
            self._start(new, cand_boxes[new_columns], cand_scores[new_columns], class_ids, det_groups, group_frame)
            detections = np.concatenate([detections, new])
        # every track is this one frame's source's (a tracker of one source): kept and new tracks are too
        return self._steps(frames, detections, offsets, ended, single=len(frames) == 1 and every)

    def _steps(self, frames: list[FrameDetections], detections: np.ndarray, offsets: dict[int, int],
               ended: list[tuple[int, TrackSummary]], single: bool) -> list[TrackerStep]:
        """Each frame's objects (its source's tracks, in row order) and ended tracks. ``single``: one frame,
        and every track is its source's, so no rows need picking out."""
        tracks = self._tracks
        published = tracks.boxes
        if (detections < 0).any():  # coasting and predicted tracks are published at their predicted boxes
            published = np.where((detections < 0)[:, None], self._kalman.boxes(), published)
        steps = []
        for frame in frames:
            if single:
                rows: np.ndarray | slice = slice(None) if frame.inferred else np.flatnonzero(tracks.states != _TENTATIVE)
            else:
                mine = tracks.groups == frame.group
                rows = np.flatnonzero(mine if frame.inferred else mine & (tracks.states != _TENTATIVE))
            local = detections[rows]
            if frame.inferred and frame.group in offsets and offsets[frame.group]:
                local = np.where(local >= 0, local - offsets[frame.group], local)
            objects = tracks.objects(rows, local, published[rows], frame.frame_index) if len(local) else []
            steps.append(TrackerStep(objects, [summary for group, summary in ended if group == frame.group]))
        return steps

    def _start(self, detections: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
               det_groups: np.ndarray, group_frame: dict[int, FrameDetections]) -> None:
        """New tracks (step 5) on ``detections`` (indices into the concatenated arrays), in their order."""
        count = len(detections)
        stride = self._id_stride
        ids = np.arange(self._next_id, self._next_id + count * stride, stride, dtype=np.int64)
        self._next_id += count * stride
        self._kalman.add(xyxy_to_xyah(boxes))
        state = _CONFIRMED if self.config.confirm_frames <= 1 else _TENTATIVE
        groups = det_groups[detections]
        frames, times = _frame_columns(groups, group_frame)
        self._tracks.add(ids, class_ids[detections], groups, boxes, scores, frames, times, state)

    def _duplicates(self, states: np.ndarray, column_of: np.ndarray, cand_boxes: np.ndarray) -> np.ndarray | None:
        """[K] bool: the rows to drop as duplicates (step 6), or None when there are none. When the
        younger of a pair had this frame's detection, the older one takes it (``column_of`` and its
        Kalman state are updated here)."""
        matched = np.flatnonzero(column_of >= 0)
        if not len(matched):
            return None
        lost = np.flatnonzero((column_of < 0) & (states != _TENTATIVE))
        if not len(lost):
            return None
        current = self._kalman.boxes()
        keys = self._tracks.keys
        overlap = iou_matrix(current[matched], current[lost], keys[matched][:, None] == keys[lost])
        duplicate = np.flatnonzero(overlap > DUPLICATE_IOU)  # row-major: the order the pairs are judged in
        if not len(duplicate):
            return None
        first_frame = self._tracks.first_frame
        dropped = np.zeros(len(states), dtype=bool)
        for i, j in zip(*np.divmod(duplicate, len(lost))):
            m, n = matched[i], lost[j]
            if dropped[m] or dropped[n]:
                continue
            if first_frame[n] < first_frame[m]:  # the lost one is older: it takes the detection
                column = column_of[m]
                self._kalman.update(np.array([n]), xyxy_to_xyah(cand_boxes[column : column + 1]))
                column_of[n], column_of[m] = column, -1
                dropped[m] = True
            else:
                dropped[n] = True
        return dropped

    def finish_group(self, group: int, timestamp: float) -> list[TrackSummary]:
        """A source ended: its confirmed and lost tracks end (``end_of_stream``), its tentative ones are
        dropped; the other sources' tracks stay (ids still never repeat)."""
        tracks = self._tracks
        mine = tracks.groups == group
        ended = [tracks.summary(row, "end_of_stream") for row in np.flatnonzero(mine & (tracks.states != _TENTATIVE)).tolist()]
        if mine.any():
            self._kalman.keep(~mine)
            tracks.keep(~mine)
        return ended

    def drop_group(self, group: int) -> None:
        """Forget a source's tracks without summaries (it is no longer tracked)."""
        mine = self._tracks.groups == group
        if mine.any():
            self._kalman.keep(~mine)
            self._tracks.keep(~mine)


def _concatenate(frames: list[FrameDetections]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """The detections of ``frames`` end to end: boxes, scores, class ids, each one's group, and each
    group's offset (its first detection's index)."""
    if len(frames) == 1:
        frame = frames[0]
        boxes, scores, classes = _detections_of(frame)
        return boxes, scores, classes, np.full(len(scores), frame.group, dtype=np.int64), {frame.group: 0}
    parts = [_detections_of(frame) for frame in frames]
    offsets, total = {}, 0
    for frame, (_, scores, _) in zip(frames, parts):
        offsets[frame.group] = total
        total += len(scores)
    if not parts:
        return _NO_BOXES, _NO_SCORES, _NO_CLASSES, _NO_CLASSES, offsets
    groups = np.repeat(np.fromiter((f.group for f in frames), dtype=np.int64, count=len(frames)), [len(p[1]) for p in parts])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), groups, offsets)


def _detections_of(frame: FrameDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(frame.scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(frame.class_ids, dtype=np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(class_ids)):
        raise ValueError(f"boxes, scores and class_ids differ in length: {len(boxes)}, {len(scores)}, {len(class_ids)}")
    return boxes, scores, class_ids


def _frame_columns(groups: np.ndarray, group_frame: dict[int, FrameDetections]) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``groups``: its source's frame index and timestamp in this step."""
    if len(group_frame) == 1:
        (frame,) = group_frame.values()
        return np.full(len(groups), frame.frame_index, dtype=np.int64), np.full(len(groups), frame.timestamp)
    index = {g: k for k, g in enumerate(group_frame)}
    position = np.fromiter((index[g] for g in groups.tolist()), dtype=np.intp, count=len(groups))
    frames = np.fromiter((f.frame_index for f in group_frame.values()), dtype=np.int64, count=len(group_frame))
    times = np.fromiter((f.timestamp for f in group_frame.values()), dtype=np.float64, count=len(group_frame))
    return frames[position], times[position]


_NO_BOXES = np.zeros((0, 4))
_NO_SCORES = np.zeros(0)
_NO_CLASSES = np.zeros(0, dtype=np.int64)


def _associate(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray, columns: np.ndarray, threshold: float,
    column_of: np.ndarray, free: np.ndarray,
) -> None:
    """One association round: match the still unmatched tracks where ``rows`` [K] to the free candidate
    columns where ``columns`` [N], through the overlapping ``pairs`` with IoU >= ``threshold``; records
    each match in ``column_of`` and ``free``."""
    pair_rows, pair_cols, pair_iou = pairs
    take = np.flatnonzero((pair_iou >= threshold) & rows[pair_rows] & columns[pair_cols] & free[pair_cols] & (column_of[pair_rows] < 0))
    if not len(take):
        return
    r, c = pair_rows[take], pair_cols[take]
    if (r[1:] == r[:-1]).any() or np.bincount(c).max() > 1:  # some track or detection has a choice: solve
        r, c = _solve(r, c, pair_iou[take], threshold)
    column_of[r] = c
    free[c] = False


def _solve(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The assignment of the candidate pairs (rows, cols) at cost 1 - IoU. The matrix spans only the rows
    and columns that have a pair: a row or column without one cannot match and takes no part in
    :func:`match_arrays`' solve, so the result is the same as on the full matrix."""
    unique_rows, r = np.unique(rows, return_inverse=True)
    unique_cols, c = np.unique(cols, return_inverse=True)
    cost = np.full((len(unique_rows), len(unique_cols)), _NO_MATCH)
    cost[r, c] = 1.0 - iou
    matched_r, matched_c = match_arrays(cost, 1.0 - threshold)
    return unique_rows[matched_r], unique_cols[matched_c]
