"""The analytics stage: per source a tracker and its zones and lines, run on each batch's results.

Where it runs and why: on the completer thread, between decoding and the publisher's queue. The
completer sees every source's results in frame order (batches complete in submission order), which a
tracker needs, and it is the one owner of every tracker and region here, so nothing needs a lock. What
other threads touch goes through two doors:

* :meth:`Analytics.reconfigure` (the reload, any thread) leaves the new settings for the completer to
  apply before its next batch; trackers keep their tracks and unchanged zones keep their counters.
* :meth:`Analytics.should_infer` (the batcher) and :meth:`Analytics.snapshot` (heartbeats, metrics)
  read values that are replaced whole, never changed in place.

Track ids are unique per daemon instance across all sources (one counter), so two cameras showing the
same scene never publish the same id, and an id is never reused.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ..analyticsconfig import LineConfig, SnapshotConfig, TrackingConfig, ZoneConfig, by_source
from ..entities import EndOfStream, FrameResult
from ..messages import label_of
from ..tracking.bytetrack import ByteTracker, FrameDetections, TrackerStep
from ..tracking.objects import TrackedObject, TrackSummary
from .regions import RegionAnalytics
from .snapshots import BestShots, Snapshot

__all__ = ["Analytics", "AnalyticsMessage", "AnalyticsSettings", "AnalyticsStage", "infer_this_frame"]

log = logging.getLogger("trtstream.analytics")


@dataclass(frozen=True, slots=True)
class AnalyticsMessage:
    """An ``event`` (zone enter/exit/dwell, line cross) or ``track`` (a confirmed track ended) message
    body for the publisher, which adds the common header fields, the sequence number and the topic."""

    source_id: str
    kind: Literal["event", "track"]
    body: dict[str, Any]
    t_captured: float | None
    attachment: Snapshot | None = None  # [snapshots]: the object's best picture, a payload part of the message


@dataclass(frozen=True)
class AnalyticsSettings:
    """What the stage needs from a config: per tracked source its ``infer_every``, its zones and lines."""

    tracking: TrackingConfig
    tracked: dict[str, int]  # tracked source id -> infer_every
    zones: dict[str, list[ZoneConfig]]
    lines: dict[str, list[LineConfig]]
    labels: tuple[str, ...]
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)

    @classmethod
    def from_config(cls, config: Any, labels: list[str]) -> "AnalyticsSettings":
        tracked = {s.id: s.infer_every for s in config.enabled_sources if config.tracks(s)}
        return cls(config.tracking, tracked, by_source(config.zones), by_source(config.lines), tuple(labels), config.snapshots)


class _Source:
    """One tracked source: its tracker group, its regions and its counters."""

    def __init__(self, settings: AnalyticsSettings, source_id: str, group: int):
        self.group = group
        self.regions = RegionAnalytics(settings.zones.get(source_id, []), settings.lines.get(source_id, []), list(settings.labels))
        self.started = 0  # tracks this source started (tentative ones included)
        self.active = 0  # tracks in its last frame's objects
        self.confirmed_ended = 0
        self.newest_id = 0  # the highest track id it has published: a higher one is a new track
        self.shots = BestShots(settings.snapshots) if settings.snapshots.enabled else None
        self.live: list[int] = []  # the track ids of its last frame (kept only with Analytics.keep_live_ids)


def infer_this_frame(infer_every: dict[str, int], source_id: str, frame_index: int) -> bool:
    """``sources[].infer_every``: the model runs on every N-th frame of a tracked source (the tracker
    predicts the others) and on every frame of an untracked one. Both stages answer the batcher with this."""
    every = infer_every.get(source_id, 1)
    return every == 1 or frame_index % every == 0


class AnalyticsStage(Protocol):
    """What the scheduler runs on each batch's results: :class:`Analytics` on the completer itself, or
    :class:`daemon.analytics.workers.AnalyticsWorkers` in worker processes. A batch goes in two halves:
    :meth:`submit` on the completer as soon as the batch is decoded, :meth:`collect` where the results
    are handed over, in the same order; ``runs_elsewhere`` says whether the two may be apart (then the
    scheduler hands over on a thread of its own, so the completer decodes the next batch meanwhile)."""

    runs_elsewhere: bool
    needs_pixels: bool  # collect reads the frames' pixels ([snapshots]): they must stay until then

    def should_infer(self, source_id: str, frame_index: int) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...

    def reconfigure(self, settings: "AnalyticsSettings") -> None: ...

    def submit(self, results: list[FrameResult]) -> Any: ...

    def collect(self, ticket: Any, results: list[FrameResult]) -> list[AnalyticsMessage]: ...

    def submit_end(self, end: EndOfStream) -> Any: ...

    def collect_end(self, ticket: Any) -> list[AnalyticsMessage]: ...

    def status(self) -> dict[str, Any] | None:
        """What the heartbeat says about where the stage runs (None: nothing to say)."""
        ...

    def close(self) -> None: ...


class Analytics:
    """The stage in this interpreter (see :class:`AnalyticsStage`): ``collect`` does the work."""

    runs_elsewhere = False

    def __init__(self, settings: AnalyticsSettings, first_id: int = 1, id_stride: int = 1):
        self._id_stride = id_stride
        self._settings = settings
        self._pending: AnalyticsSettings | None = None
        self._pending_lock = threading.Lock()
        self._infer_every = dict(settings.tracked)
        self._sources: dict[str, _Source] = {}
        self._groups = itertools.count()  # a source's group in the tracker; never reused
        self._tracker = self._new_tracker(settings, first_id=first_id)
        self._snapshot: dict[str, Any] = {}
        self.keep_live_ids = False  # a worker process whose pictures are kept by the daemon: see live_ids

    def _new_tracker(self, settings: AnalyticsSettings, first_id: int) -> ByteTracker:
        """One tracker for every source (:class:`ByteTracker` says why), ids from ``first_id``."""
        classes = settings.tracking.classes
        tracked = None if classes is None else {i for i, label in enumerate(settings.labels) if label in set(classes)}
        return ByteTracker(settings.tracking, tracked, first_id=first_id, id_stride=self._id_stride)

    @property
    def needs_pixels(self) -> bool:
        return self._settings.snapshots.enabled

    @property
    def next_id(self) -> int:
        """The id its tracker gives out next (a worker that replaces a crashed one starts there)."""
        return self._tracker.next_id

    # -- the scheduler's two halves (AnalyticsStage): here both are on the completer ----------------------
    def submit(self, results: list[FrameResult]) -> None:
        return None

    def collect(self, ticket: None, results: list[FrameResult]) -> list[AnalyticsMessage]:
        return self.process(results)

    def submit_end(self, end: EndOfStream) -> EndOfStream:
        return end

    def collect_end(self, ticket: EndOfStream) -> list[AnalyticsMessage]:
        return self.end(ticket)

    def status(self) -> None:
        return None

    def close(self) -> None:
        pass

    # -- other threads ---------------------------------------------------------------------------------
    def reconfigure(self, settings: AnalyticsSettings) -> None:
        """New zones, lines or tracked sources from a reload: applied by the completer before its next
        batch. Changed [tracking] settings (or labels) start tracking again: tracks end without
        messages, counters start from zero, ids go on from where they were."""
        with self._pending_lock:
            self._pending = settings
        self._infer_every = dict(settings.tracked)

    def should_infer(self, source_id: str, frame_index: int) -> bool:
        """Whether the model runs on this frame (``infer_every``; untracked sources: always)."""
        return infer_this_frame(self._infer_every, source_id, frame_index)

    def snapshot(self) -> dict[str, Any]:
        """Per tracked source: active and ended track counts, zone and line counters (heartbeats, metrics)."""
        return self._snapshot

    # -- the completer -----------------------------------------------------------------------------------
    def process(self, results: list[FrameResult]) -> list[AnalyticsMessage]:
        """Track, annotate the detections of ``results`` in place, and return their events. The batch's
        frames are tracked in rounds of one frame per source (a source's frames in their order), each
        round in one :meth:`ByteTracker.step`."""
        self._apply_pending()
        if not self._sources and not self._settings.tracked:  # nothing tracked: no Python work per result
            return []
        messages: list[AnalyticsMessage] = []
        rounds: list[list[tuple[_Source, FrameResult]]] = []
        taken: dict[str, int] = {}
        for result in results:
            source_id = result.frame.source_id
            source = self._source(source_id)
            if source is None:
                continue
            k = taken.get(source_id, 0)
            taken[source_id] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append((source, result))
        for members in rounds:
            frames = [_frame_detections(source.group, result) for source, result in members]
            for (source, result), step in zip(members, self._tracker.step(frames)):
                self._annotate(source, result, step, messages)
        if taken:
            self._refresh_snapshot(taken)
        return messages

    def end(self, end: EndOfStream) -> list[AnalyticsMessage]:
        """A source ended: its tracks end (``track`` messages, exits from zones) before its ``eos``."""
        source = self._sources.get(end.source_id)
        if source is None:
            return []
        messages: list[AnalyticsMessage] = []
        now = time.time()
        for summary in self._tracker.finish_group(source.group, now):
            self._ended(source, end.source_id, summary, summary.last_frame, now, None, messages)
        if source.shots is not None:
            source.shots.keep_only(set())
        source.active = 0
        self._refresh_snapshot()
        return messages

    def live_ids(self, source_id: str) -> list[int]:
        """The ids of the source's tracks after its last frame (tentative and coasting ones too): what the
        daemon's side keeps pictures of when this stage runs in a worker (daemon/analytics/workers.py)."""
        source = self._sources.get(source_id)
        return source.live if source is not None else []

    def _apply_pending(self) -> None:
        if self._pending is None:  # the common case, without taking the lock (reading one attribute is atomic)
            return
        with self._pending_lock:
            settings, self._pending = self._pending, None
        if settings is None:
            return
        old = self._settings
        self._settings = settings
        if settings.tracking != old.tracking or settings.labels != old.labels:
            self._tracker = self._new_tracker(settings, first_id=self._tracker.next_id)
            self._sources.clear()  # the next result of each tracked source starts it again
        else:
            for source_id in list(self._sources):
                source = self._sources[source_id]
                if settings.snapshots != old.snapshots:  # kept pictures follow the new settings from the next frame
                    source.shots = BestShots(settings.snapshots) if settings.snapshots.enabled else None
                if source_id not in settings.tracked:
                    self._tracker.drop_group(source.group)
                    del self._sources[source_id]
                    continue
                source.regions.reconfigure(settings.zones.get(source_id, []), settings.lines.get(source_id, []))
        self._refresh_snapshot()  # heartbeats stop showing sources no longer tracked, even if none is left to process

    def _source(self, source_id: str) -> _Source | None:
        source = self._sources.get(source_id)
        if source is None and source_id in self._settings.tracked:
            source = self._sources[source_id] = _Source(self._settings, source_id, next(self._groups))
        return source

    def _annotate(self, source: _Source, result: FrameResult, step: TrackerStep, messages: list[AnalyticsMessage]) -> None:
        """Write the frame's track fields into its detections (and the predicted ones it publishes), and
        run its zones and lines."""
        frame = result.frame
        shape = frame.image.shape
        timestamp = frame.t_captured
        detections: list[dict[str, Any]] = result.results.get("detections", [])
        inferred = result.inferred
        coasting = self._settings.tracking.publish_coasting
        tracked = [False] * len(detections)
        newest = source.newest_id
        for obj in step.objects:  # per object: plain assignments (this loop runs for every box of every frame)
            track_id, index = obj.track_id, obj.detection
            if track_id > newest:
                newest = track_id
                source.started += 1
            if index is not None:
                detection = detections[index]
                detection["track_id"] = track_id
                detection["track_state"] = obj.state
                detection["matched_now"] = True
                detection["track_age"] = obj.age
                tracked[index] = True
            elif (not inferred and obj.state == "confirmed") or (coasting and obj.state == "lost"):
                fields = {"track_id": track_id, "track_state": obj.state, "matched_now": False, "track_age": obj.age}
                detections.append(self._predicted(obj, fields, shape[1], shape[0]))
        source.newest_id = newest
        if False in tracked:  # most frames every detection has a track
            for index, done in enumerate(tracked):
                if not done:
                    detection = detections[index]
                    detection["track_id"] = detection["track_state"] = detection["track_age"] = None
                    detection["matched_now"] = True
        shots = source.shots
        if shots is not None and inferred and isinstance(frame.image, np.ndarray):  # host pixels (not NVDEC frames)
            shots.update(step.objects, frame.image, frame.index)
        for event in source.regions.update(step.objects, frame.index, timestamp, shape[1], shape[0]):
            attachment = shots.snapshot(event.get("track_id")) if shots is not None else None
            messages.append(AnalyticsMessage(frame.source_id, "event", event, timestamp, attachment))
        for summary in step.ended:
            self._ended(source, frame.source_id, summary, frame.index, timestamp, timestamp, messages)
        if shots is not None and shots:
            shots.keep_only({obj.track_id for obj in step.objects})
        if self.keep_live_ids:
            source.live = [obj.track_id for obj in step.objects]
        if inferred:
            source.active = len(step.objects)
        result.results["detections"] = detections

    def _predicted(self, obj: TrackedObject, fields: dict[str, Any], width: int, height: int) -> dict[str, Any]:
        """A track's predicted box as a detection, clipped to the frame like every published box."""
        label = label_of(self._settings.labels, obj.class_id)
        x1, y1, x2, y2 = (float(v) for v in obj.box)
        box = [round(min(max(x1, 0.0), width), 1), round(min(max(y1, 0.0), height), 1),
               round(min(max(x2, 0.0), width), 1), round(min(max(y2, 0.0), height), 1)]
        return {"label": label, "class_id": obj.class_id, "score": round(float(obj.score), 4), "box": box, **fields}

    def _ended(self, source: _Source, source_id: str, summary: TrackSummary, frame_index: int, timestamp: float,
               t_captured: float | None, messages: list[AnalyticsMessage]) -> None:
        track_id = summary.track_id
        attachment = source.shots.snapshot(track_id) if source.shots is not None else None
        for event in source.regions.track_ended(track_id, timestamp, frame_index):
            messages.append(AnalyticsMessage(source_id, "event", event, t_captured, attachment))
        source.confirmed_ended += 1
        messages.append(AnalyticsMessage(source_id, "track", {
            "track_id": track_id,
            "class_id": summary.class_id,
            "label": label_of(self._settings.labels, summary.class_id),
            "reason": summary.reason,
            "first_frame": summary.first_frame,
            "last_frame": summary.last_frame,
            "first_seen": summary.first_seen,
            "last_seen": summary.last_seen,
            "duration_s": round(summary.last_seen - summary.first_seen, 3),
            "frames": summary.frames,
            "best_score": round(float(summary.best_score), 4),
            "path": [[round(float(x), 1), round(float(y), 1)] for x, y in summary.path],
        }, t_captured, attachment))

    def _refresh_snapshot(self, changed: Iterable[str] | None = None) -> None:
        """Publish a new snapshot (replaced whole: readers on other threads see one or the other). After a
        batch only the sources it touched are rebuilt (``changed``): with 96 cameras, rebuilding all
        of them per batch was a visible share of the completer's GIL time."""
        snapshot = {} if changed is None else dict(self._snapshot)
        for source_id in self._sources if changed is None else changed:
            source = self._sources.get(source_id)
            if source is None:
                continue
            regions = source.regions.snapshot()
            snapshot[source_id] = {
                "tracks": {"active": source.active, "started": source.started, "ended": source.confirmed_ended},
                "zones": regions["zones"],
                "lines": regions["lines"],
            }
        self._snapshot = snapshot


def _frame_detections(group: int, result: FrameResult) -> FrameDetections:
    """A result's detections as the tracker takes them (a skipped frame has none to give)."""
    frame = result.frame
    if not result.inferred:
        return FrameDetections.skipped(group, frame.index, frame.t_captured)
    detections = result.results.get("detections", [])
    count = len(detections)
    boxes = np.fromiter(itertools.chain.from_iterable([d["box"] for d in detections]), dtype=np.float64, count=4 * count).reshape(count, 4)
    scores = np.fromiter([d["score"] for d in detections], dtype=np.float64, count=count)
    classes = np.fromiter([d["class_id"] for d in detections], dtype=np.int64, count=count)
    return FrameDetections(group, boxes, scores, classes, frame.index, frame.t_captured)

