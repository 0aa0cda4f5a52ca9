"""Zones and lines of one source: confirmed tracks in, ``enter``/``exit``/``dwell``/``cross`` events out.

Why it is built this way:

* **Only confirmed tracks count.** Tentative tracks are often false positives, and lost (coasting) ones
  are the tracker's guess: counting either gives the ghost counts users complain about. Frames in which
  a track is not confirmed are not observations: they neither advance nor reset its hysteresis.
* **Hysteresis, not instant flips.** A zone's inside/outside state, and a line's side, change only after
  ``min_frames`` observations in a row on the other side. A box jittering on a boundary never gets that
  far, so it never counts; a track that really crosses and comes back counts once each way.
* **Lines count through the segment only.** Side observations count only where the anchor projects onto
  the segment. A track reaching the other side beyond an end (around the line rather than through it)
  forgets its established side, so it cannot produce a crossing until it is established again.
* **Vectorised over (track, region) pairs.** Per-track state lives in dense [slot, region] arrays; one
  frame is a few dozen numpy calls whatever the number of objects and regions, and Python loops run
  only over the (rare) pairs that produce an event.
* **Live edits.** :meth:`RegionAnalytics.reconfigure` keeps unchanged regions' counters and states, so a
  SIGHUP that edits one zone does not disturb the others.

One :class:`RegionAnalytics` per source, owned by one thread (the one that runs the tracker); nothing
here is locked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Sequence

import numpy as np

from ..analyticsconfig import LineConfig, ZoneConfig
from ..messages import label_of
from ..tracking.objects import TrackedObject
from .geometry import ANCHOR_INDEX, Polygons, Segments, all_anchors, points_in_polygons, scale_points, segment_sides

__all__ = ["RegionAnalytics", "STALE_FRAMES"]

#: Updates after which a track not seen since is dropped (with ``exit`` events, reason ``expired``) even
#: if the tracker never ended it: bounds memory whatever the caller does (5 minutes at 30 fps).
STALE_FRAMES = 9000
_SWEEP_EVERY = 256
_FIRST_CAPACITY = 64


def _point(xy: np.ndarray) -> list[float]:
    return [round(float(xy[0]), 1), round(float(xy[1]), 1)]


def _class_table(regions: Sequence[ZoneConfig | LineConfig], labels: Sequence[str]) -> np.ndarray:
    """[R, K + 1] bool: whether class id k counts for region r; column K stands for every class id
    outside the labels, which only regions without a class filter count. A filter label the model does
    not have simply never matches (config checks are the place to refuse it)."""
    table = np.zeros((len(regions), len(labels) + 1), dtype=bool)
    for row, region in enumerate(regions):
        if region.classes is None:
            table[row] = True
        else:
            wanted = set(region.classes)
            table[row, : len(labels)] = [label in wanted for label in labels]
    return table


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity,) + array.shape[1:], dtype=array.dtype)
    grown[: len(array)] = array
    return grown


@dataclass
class _ZoneCounters:
    entered: int = 0
    exited: int = 0
    dwells: int = 0


@dataclass
class _LineCounters:
    forward: int = 0
    backward: int = 0


@dataclass
class _Zones:
    """The zones of a source and every track's state in each: columns are zones, rows track slots."""

    configs: list[ZoneConfig]
    capacity: int
    counters: list[_ZoneCounters] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.configs)
        self.counters = self.counters or [_ZoneCounters() for _ in range(count)]
        self.anchor = np.array([ANCHOR_INDEX[zone.anchor] for zone in self.configs], dtype=np.intp)
        self.min_frames = np.array([zone.min_frames for zone in self.configs], dtype=np.int32)
        self.dwell_s = np.array([np.inf if zone.dwell_s is None else zone.dwell_s for zone in self.configs])
        self.inside = np.zeros((self.capacity, count), dtype=bool)
        self.streak = np.zeros((self.capacity, count), dtype=np.int32)  # observations in a row on the other side
        self.entered_at = np.zeros((self.capacity, count))
        self.dwelled = np.zeros((self.capacity, count), dtype=bool)

    def grow(self, capacity: int) -> None:
        self.capacity = capacity
        self.inside, self.streak = _grow(self.inside, capacity), _grow(self.streak, capacity)
        self.entered_at, self.dwelled = _grow(self.entered_at, capacity), _grow(self.dwelled, capacity)

    def clear(self, slot: int) -> None:
        self.inside[slot] = False
        self.streak[slot] = 0
        self.dwelled[slot] = False

    def keep(self, old: "_Zones", new_column: int, old_column: int) -> None:
        self.counters[new_column] = old.counters[old_column]
        self.inside[:, new_column] = old.inside[:, old_column]
        self.streak[:, new_column] = old.streak[:, old_column]
        self.entered_at[:, new_column] = old.entered_at[:, old_column]
        self.dwelled[:, new_column] = old.dwelled[:, old_column]


@dataclass
class _Lines:
    """The lines of a source and every track's state for each: columns are lines, rows track slots.
    Sides are -1 (left of p1 -> p2), +1 (right) or 0 (none yet)."""

    configs: list[LineConfig]
    capacity: int
    counters: list[_LineCounters] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.configs)
        self.counters = self.counters or [_LineCounters() for _ in range(count)]
        self.anchor = np.array([ANCHOR_INDEX[line.anchor] for line in self.configs], dtype=np.intp)
        self.min_frames = np.array([line.min_frames for line in self.configs], dtype=np.int32)
        self.established = np.zeros((self.capacity, count), dtype=np.int8)
        self.pending = np.zeros((self.capacity, count), dtype=np.int8)
        self.streak = np.zeros((self.capacity, count), dtype=np.int32)

    def grow(self, capacity: int) -> None:
        self.capacity = capacity
        self.established, self.pending = _grow(self.established, capacity), _grow(self.pending, capacity)
        self.streak = _grow(self.streak, capacity)

    def clear(self, slot: int) -> None:
        self.established[slot] = 0
        self.pending[slot] = 0
        self.streak[slot] = 0

    def keep(self, old: "_Lines", new_column: int, old_column: int) -> None:
        self.counters[new_column] = old.counters[old_column]
        self.established[:, new_column] = old.established[:, old_column]
        self.pending[:, new_column] = old.pending[:, old_column]
        self.streak[:, new_column] = old.streak[:, old_column]


class RegionAnalytics:
    """The zones and lines of one source (see the module docstring for the rules).

    ``labels``: the model's class names by class id, for class filters and events' ``label``.
    ``stale_frames``: updates after which a track absent since is dropped (:data:`STALE_FRAMES`)."""

    def __init__(self, zones: list[ZoneConfig], lines: list[LineConfig], labels: list[str], *, stale_frames: int = STALE_FRAMES) -> None:
        self._labels = list(labels)
        self._stale_frames = stale_frames
        self._capacity = _FIRST_CAPACITY
        self._slots: dict[int, int] = {}  # track id -> row of the state arrays
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self._track_of = np.zeros(self._capacity, dtype=np.int64)
        self._class_of = np.zeros(self._capacity, dtype=np.int64)
        self._seen_tick = np.zeros(self._capacity, dtype=np.int64)  # which update last saw the track
        self._seen_time = np.zeros(self._capacity)
        self._last_anchors = np.zeros((self._capacity, 3, 2))
        self._tick = 0
        self._zones = _Zones([], self._capacity)
        self._lines = _Lines([], self._capacity)
        self.reconfigure(zones, lines)

    # -- configuration ------------------------------------------------------------------------------

    def reconfigure(self, zones: list[ZoneConfig], lines: list[LineConfig]) -> None:
        """Apply a new set of zones and lines (SIGHUP). A zone or line with the same name and an equal
        config keeps its counters and every track's state in it. An edited one is a *new* region: it
        starts with zero counters and no track inside or established, and the edit itself produces no
        events (tracks inside an edited zone enter it again after ``min_frames``). Removed ones are
        dropped without events; new ones start empty."""
        for kind, regions in (("zone", zones), ("line", lines)):
            names = [region.name for region in regions]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique per source: {names}")
        old_zones, old_lines = self._zones, self._lines
        self._zones = _Zones(list(zones), self._capacity)
        self._lines = _Lines(list(lines), self._capacity)
        for new, old in ((self._zones, old_zones), (self._lines, old_lines)):
            previous = {config.name: (column, config) for column, config in enumerate(old.configs)}
            for column, config in enumerate(new.configs):
                match = previous.get(config.name)
                if match is not None and match[1] == config:
                    new.keep(old, column, match[0])  # type: ignore[arg-type]
        self._zone_allowed = _class_table(self._zones.configs, self._labels)
        self._line_allowed = _class_table(self._lines.configs, self._labels)
        # No class filter anywhere (the usual case): every observation counts, and the per-frame
        # updates skip the [N, regions] "counts" masks (the same results: they would be all True).
        self._zones_count_all = bool(self._zone_allowed.all())
        self._lines_count_all = bool(self._line_allowed.all())
        self._zones_dwell = bool(np.isfinite(self._zones.dwell_s).any())
        self._geometry_size: tuple[int, int] | None = None
        self._polygons: Polygons | None = None
        self._segments: Segments | None = None

    def _geometry(self, width: int, height: int) -> tuple[Polygons | None, Segments | None]:
        """The regions in this frame's pixels, rebuilt only when the frame size changes."""
        if self._geometry_size != (width, height):
            zones, lines = self._zones.configs, self._lines.configs
            self._polygons = Polygons.build([scale_points(zone.polygon, zone.coordinates, width, height) for zone in zones]) if zones else None
            self._segments = Segments.build([scale_points(line.points, line.coordinates, width, height) for line in lines]) if lines else None
            self._geometry_size = (width, height)
        return self._polygons, self._segments

    # -- tracks ---------------------------------------------------------------------------------------

    def _slot(self, track_id: int) -> int:
        slot = self._slots.get(track_id)
        if slot is None:
            if not self._free:
                self._grow()
            slot = self._free.pop()
            self._slots[track_id] = slot
            self._track_of[slot] = track_id
        return slot

    def _grow(self) -> None:
        old, capacity = self._capacity, self._capacity * 2
        self._capacity = capacity
        self._track_of, self._class_of = _grow(self._track_of, capacity), _grow(self._class_of, capacity)
        self._seen_tick, self._seen_time = _grow(self._seen_tick, capacity), _grow(self._seen_time, capacity)
        self._last_anchors = _grow(self._last_anchors, capacity)
        self._zones.grow(capacity)
        self._lines.grow(capacity)
        self._free.extend(range(capacity - 1, old - 1, -1))

    def _label(self, class_id: int) -> str:
        return label_of(self._labels, class_id)

    def _head(self, event: str, key: str, name: str, slot: int, frame_index: int, timestamp: float, **first: Any) -> dict[str, Any]:
        """The fields every event starts with, in the order a subscriber sees them (``first``: fields
        right after the region's name, e.g. a crossing's direction)."""
        class_id = int(self._class_of[slot])
        return {
            "event": event, key: name, **first, "track_id": int(self._track_of[slot]), "class_id": class_id,
            "label": self._label(class_id), "frame_index": int(frame_index), "time": float(timestamp),
        }

    def _forget(self, slot: int, timestamp: float, frame_index: int, reason: str, until: float) -> list[dict[str, Any]]:
        """Exit every zone the track in ``slot`` is inside (dwell measured up to ``until``), then free the slot."""
        events = []
        zones = self._zones
        for column in np.flatnonzero(zones.inside[slot]):
            column = int(column)
            name = zones.configs[column].name
            event = self._head("exit", "zone", name, slot, frame_index, timestamp)
            event["point"] = _point(self._last_anchors[slot, zones.anchor[column]])
            event["dwell_s"] = round(max(0.0, float(until - zones.entered_at[slot, column])), 3)
            event["reason"] = reason
            zones.counters[column].exited += 1
            events.append(event)
        zones.clear(slot)
        self._lines.clear(slot)
        del self._slots[int(self._track_of[slot])]
        self._free.append(slot)
        return events

    def track_ended(self, track_id: int, timestamp: float, frame_index: int) -> list[dict[str, Any]]:
        """The tracker ended ``track_id``: ``exit`` events (reason ``track_ended``) for the zones it was
        inside, with ``point`` its last anchor, then its state is forgotten. Unknown ids: no events."""
        slot = self._slots.get(track_id)
        if slot is None:
            return []
        return self._forget(slot, timestamp, frame_index, "track_ended", timestamp)

    def _sweep(self, timestamp: float, frame_index: int) -> list[dict[str, Any]]:
        """Drop tracks no update has seen for ``stale_frames`` (the tracker should have ended them):
        ``exit`` events with reason ``expired``, dwell measured up to when the track was last seen."""
        events: list[dict[str, Any]] = []
        if not self._slots:
            return events
        slots = np.fromiter(self._slots.values(), dtype=np.intp, count=len(self._slots))
        for slot in slots[self._seen_tick[slots] < self._tick - self._stale_frames]:
            events += self._forget(int(slot), timestamp, frame_index, "expired", float(self._seen_time[slot]))
        return events

    # -- frames ---------------------------------------------------------------------------------------

    def update(self, objects: list[TrackedObject], frame_index: int, timestamp: float, width: int, height: int) -> list[dict[str, Any]]:
        """The events of one frame: zone events (zones in config order, then objects in the frame's order),
        then line crossings. ``width``/``height``: this frame's size, which normalised regions scale to."""
        self._tick += 1
        events: list[dict[str, Any]] = []
        if self._tick % _SWEEP_EVERY == 0:
            events += self._sweep(timestamp, frame_index)
        confirmed = [obj for obj in objects if obj.state == "confirmed"]
        if not confirmed or not (self._zones.configs or self._lines.configs):
            return events
        count = len(confirmed)
        # Flat lists into numpy in one call each: cheaper than np.array over tuples or fromiter over a
        # generator, and this runs for every object of every frame.
        boxes = np.fromiter(chain.from_iterable([obj.box for obj in confirmed]), dtype=np.float64, count=4 * count).reshape(count, 4)
        class_ids = np.array([obj.class_id for obj in confirmed], dtype=np.int64)
        slot_list = list(map(self._slots.get, [obj.track_id for obj in confirmed]))
        if None in slot_list:  # tracks seen for the first time get their slots, in the objects' order
            slot_list = [self._slot(obj.track_id) if slot is None else slot for obj, slot in zip(confirmed, slot_list)]
        slots = np.array(slot_list, dtype=np.intp)
        anchors = all_anchors(boxes)  # [3, N, 2]
        self._class_of[slots] = class_ids
        self._seen_tick[slots] = self._tick
        self._seen_time[slots] = timestamp
        self._last_anchors[slots] = anchors.transpose(1, 0, 2)
        columns = np.where((class_ids >= 0) & (class_ids < len(self._labels)), class_ids, len(self._labels))
        polygons, segments = self._geometry(width, height)
        if polygons is not None:
            events += self._update_zones(polygons, anchors, slots, columns, frame_index, timestamp)
        if segments is not None:
            events += self._update_lines(segments, anchors, slots, columns, frame_index, timestamp)
        return events

    def _update_zones(
        self, polygons: Polygons, anchors: np.ndarray, slots: np.ndarray, columns: np.ndarray, frame_index: int, timestamp: float,
    ) -> list[dict[str, Any]]:
        zones = self._zones
        observed = points_in_polygons(anchors[zones.anchor], polygons).T  # [N, Z]
        inside, streak = zones.inside[slots], zones.streak[slots]
        if self._zones_count_all:
            counts = None
            streak = np.where(observed != inside, streak + 1, 0)
        else:
            counts = self._zone_allowed[:, columns].T  # [N, Z]: the class counts for the zone
            streak = np.where(counts & (observed != inside), streak + 1, np.where(counts, 0, streak))
        flip = streak >= zones.min_frames
        events: list[dict[str, Any]] = []
        if flip.any():
            entered_at = zones.entered_at[slots]
            dwelled = zones.dwelled[slots]
            for column, row in zip(*np.nonzero(flip.T)):
                slot, name = int(slots[row]), zones.configs[column].name
                event = self._head("exit" if inside[row, column] else "enter", "zone", name, slot, frame_index, timestamp)
                event["point"] = _point(anchors[zones.anchor[column], row])
                if inside[row, column]:
                    event["dwell_s"] = round(max(0.0, timestamp - float(entered_at[row, column])), 3)
                    event["reason"] = "left"
                    zones.counters[column].exited += 1
                else:
                    entered_at[row, column] = timestamp
                    dwelled[row, column] = False
                    zones.counters[column].entered += 1
                events.append(event)
            inside = inside ^ flip
            streak[flip] = 0
            zones.entered_at[slots] = entered_at
            zones.dwelled[slots] = dwelled
            zones.inside[slots] = inside
        zones.streak[slots] = streak
        if self._zones_dwell:
            due = inside & ~zones.dwelled[slots] & (timestamp - zones.entered_at[slots] >= zones.dwell_s)
            if counts is not None:
                due &= counts
            if due.any():
                for column, row in zip(*np.nonzero(due.T)):
                    slot = int(slots[row])
                    event = self._head("dwell", "zone", zones.configs[column].name, slot, frame_index, timestamp)
                    event["point"] = _point(anchors[zones.anchor[column], row])
                    event["dwell_s"] = round(timestamp - float(zones.entered_at[slot, column]), 3)
                    zones.dwelled[slot, column] = True
                    zones.counters[column].dwells += 1
                    events.append(event)
        return events

    def _update_lines(
        self, segments: Segments, anchors: np.ndarray, slots: np.ndarray, columns: np.ndarray, frame_index: int, timestamp: float,
    ) -> list[dict[str, Any]]:
        lines = self._lines
        side, within = segment_sides(anchors[lines.anchor], segments)
        side, within = side.T, within.T  # [N, L]
        established, pending, streak = lines.established[slots], lines.pending[slots], lines.streak[slots]
        valid = within & (side != 0)  # an observation of a side, through the segment
        # Out of the span (or exactly on the line): the run of observations is broken; reaching the other
        # side out of the span means going round an end, which must not become a crossing later. Sides
        # are -1, 0 or +1: a negative product is two established, opposite sides.
        went_round = ~within & (side * established < 0)
        if self._lines_count_all:
            streak = np.where(valid, np.where(side == pending, streak + 1, 1), 0)
            pending = side * valid
        else:
            counts = self._line_allowed[:, columns].T
            valid &= counts
            went_round &= counts
            streak = np.where(valid, np.where(side == pending, streak + 1, 1), np.where(counts, 0, streak))
            pending = np.where(valid, side, np.where(counts, 0, pending)).astype(np.int8)
        established[went_round] = 0  # a copy of the slots' rows, written back below
        settle = valid & (streak >= lines.min_frames) & (side != established)
        events: list[dict[str, Any]] = []
        if settle.any():
            crossed = settle & (established != 0)  # a first established side is no crossing
            for column, row in zip(*np.nonzero(crossed.T)):
                config = lines.configs[column]
                direction = "forward" if side[row, column] > 0 else "backward"
                if config.directions not in ("both", direction):
                    continue
                counters = lines.counters[column]
                if direction == "forward":
                    counters.forward += 1
                else:
                    counters.backward += 1
                event = self._head("cross", "line", config.name, int(slots[row]), frame_index, timestamp, direction=direction)
                event["point"] = _point(anchors[lines.anchor[column], row])
                events.append(event)
            established = np.where(settle, side, established).astype(np.int8)
        lines.established[slots] = established
        lines.pending[slots] = pending
        lines.streak[slots] = streak
        return events

    # -- counters -------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters since each zone or line was (re)defined; occupancy = confirmed tracks inside now
        (coasting ones stay inside until they leave or their track ends)."""
        zones, lines = self._zones, self._lines
        occupancy = zones.inside.sum(axis=0)
        return {
            "zones": {
                config.name: {"occupancy": int(occupancy[column]), "entered": counters.entered, "exited": counters.exited, "dwells": counters.dwells}
                for column, (config, counters) in enumerate(zip(zones.configs, zones.counters))
            },
            "lines": {
                config.name: {"forward": counters.forward, "backward": counters.backward}
                for config, counters in zip(lines.configs, lines.counters)
            },
        }
