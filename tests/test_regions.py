"""Zones and lines (daemon.analytics): hysteresis, confirmed tracks only, segment span, class filters,
normalised coordinates, track ends and expiry, live reconfiguration, counters and the events' shape.

Tracks are made by hand: each TrackedObject's box has its bottom centre (the default anchor) at the
point a test names, so a path is a list of anchor points."""

from __future__ import annotations

import json

import numpy as np

from daemon.analytics.geometry import anchor_points, points_in_polygon, segment_side
from daemon.analytics.regions import RegionAnalytics
from daemon.analyticsconfig import LineConfig, ZoneConfig
from daemon.tracking.objects import TrackedObject

LABELS = ["person", "car", "dog"]
W, H = 640, 480
SQUARE = [(100.0, 100.0), (300.0, 100.0), (300.0, 300.0), (100.0, 300.0)]
HORIZONTAL = ((100.0, 200.0), (300.0, 200.0))  # left of p1 -> p2 is up on screen, right is down


def obj(track_id: int, x: float, y: float, state: str = "confirmed", class_id: int = 0) -> TrackedObject:
    """A track whose box's bottom centre is (x, y)."""
    return TrackedObject(track_id, state, state != "lost", 0 if state != "lost" else None, (x - 10, y - 40, x + 10, y), class_id, 0.9, 10, 10)  # type: ignore[arg-type]


def zone(name: str = "z", **kw) -> ZoneConfig:
    return ZoneConfig(name=name, source="cam", polygon=kw.pop("polygon", SQUARE), **kw)


def line(name: str = "l", **kw) -> LineConfig:
    return LineConfig(name=name, source="cam", points=kw.pop("points", HORIZONTAL), **kw)


def run(analytics: RegionAnalytics, path, track_id: int = 1, start: int = 0, dt: float = 1.0, **kw) -> list[dict]:
    """Feed one track along ``path`` (anchor points), one frame each; the events of all frames."""
    events = []
    for offset, (x, y) in enumerate(path):
        index = start + offset
        events += analytics.update([obj(track_id, x, y, **kw)], index, index * dt, W, H)
    return events


def kinds(events) -> list[tuple]:
    return [(e["event"], e.get("direction")) for e in events]


# -- geometry ---------------------------------------------------------------------------------------


def test_anchor_points_of_boxes():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 4, 2]], dtype=float)
    assert anchor_points(boxes, "bottom_center").tolist() == [[20, 60], [2, 2]]
    assert anchor_points(boxes, "center").tolist() == [[20, 40], [2, 1]]
    assert anchor_points(boxes, "top_center").tolist() == [[20, 20], [2, 0]]


def test_points_in_polygon_and_its_edge_rule():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    points = np.array([[5, 5], [11, 5], [-1, 5], [5, -1], [5, 11]], dtype=float)
    assert points_in_polygon(points, square).tolist() == [True, False, False, False, False]
    # Half-open: left and top edges inside, right and bottom edges outside.
    edges = np.array([[0, 5], [5, 0], [10, 5], [5, 10]], dtype=float)
    assert points_in_polygon(edges, square).tolist() == [True, True, False, False]
    # Two squares sharing the edge x = 10: a point on it is in exactly one of them.
    right = square + [10, 0]
    shared = np.array([[10, 3], [10, 7]], dtype=float)
    assert (points_in_polygon(shared, square) ^ points_in_polygon(shared, right)).all()
    # A concave polygon (a U): the notch is outside.
    u_shape = np.array([[0, 0], [3, 0], [3, 8], [7, 8], [7, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    assert points_in_polygon(np.array([[5, 4], [5, 9], [1, 4]], dtype=float), u_shape).tolist() == [False, True, True]


def test_segment_side_is_right_positive_in_image_coordinates_and_knows_its_span():
    # p1 -> p2 points right on screen; y grows down, so "right of the line" is below it.
    side, within = segment_side(np.array([[5, 5], [5, -5], [20, 5], [0, 3], [5, 0]], dtype=float), (0, 0), (10, 0))
    assert side.tolist() == [1, -1, 1, 1, 0]
    assert within.tolist() == [True, True, False, True, True]
    # p1 -> p2 pointing down the screen: its right is towards -x.
    side, _ = segment_side(np.array([[-3, 5], [3, 5]], dtype=float), (0, 0), (0, 10))
    assert side.tolist() == [1, -1]


# -- lines ------------------------------------------------------------------------------------------


def test_a_box_jittering_on_the_line_never_counts():
    jitter = [(200, 198 if i % 2 else 202) for i in range(60)]
    analytics = RegionAnalytics([], [line(min_frames=2)], LABELS)
    assert run(analytics, [(200, 150)] * 3 + jitter) == []
    assert analytics.snapshot()["lines"]["l"] == {"forward": 0, "backward": 0}
    # The same path does flip sides: without hysteresis it would count every frame.
    eager = RegionAnalytics([], [line(min_frames=1)], LABELS)
    assert len(run(eager, [(200, 150)] * 3 + jitter)) > 50


def test_across_and_back_counts_once_each_way_with_the_right_directions():
    analytics = RegionAnalytics([], [line(min_frames=2)], LABELS)
    path = [(200, 150), (200, 170), (200, 190), (200, 210), (200, 230), (200, 250), (200, 230), (200, 195), (200, 180), (200, 150)]
    events = run(analytics, path)
    assert kinds(events) == [("cross", "forward"), ("cross", "backward")]
    forward, backward = events
    assert forward["frame_index"] == 4 and forward["point"] == [200.0, 230.0]  # second frame below the line
    assert backward["frame_index"] == 8 and backward["point"] == [200.0, 180.0]
    assert analytics.snapshot()["lines"]["l"] == {"forward": 1, "backward": 1}


def test_forward_follows_line_config_for_a_vertical_line():
    # p1 above p2: looking down the screen, the left side is +x, so moving from +x to -x is forward.
    analytics = RegionAnalytics([], [line(points=((200.0, 100.0), (200.0, 300.0)))], LABELS)
    assert kinds(run(analytics, [(260, 200), (250, 200), (240, 200), (160, 200), (150, 200)])) == [("cross", "forward")]


def test_directions_filter_events_and_counts():
    analytics = RegionAnalytics([], [line(directions="forward")], LABELS)
    path = [(200, 150)] * 3 + [(200, 250)] * 3 + [(200, 150)] * 3 + [(200, 250)] * 3
    events = run(analytics, path)
    assert kinds(events) == [("cross", "forward"), ("cross", "forward")]
    assert analytics.snapshot()["lines"]["l"] == {"forward": 2, "backward": 0}
    backward_only = RegionAnalytics([], [line(directions="backward")], LABELS)
    assert kinds(run(backward_only, path)) == [("cross", "backward")]


def test_crossing_beyond_the_segment_or_around_its_end_does_not_count():
    analytics = RegionAnalytics([], [line()], LABELS)
    # Across the line's extension, well right of x = 300.
    assert run(analytics, [(400, 150)] * 3 + [(400, 250)] * 3 + [(400, 150)] * 3) == []
    # Established above the segment, then round its right end, then below the segment.
    around = [(200, 150)] * 3 + [(320, 150), (340, 190), (340, 210), (320, 250)] + [(250, 250)] * 3
    assert run(analytics, around, track_id=2) == []
    # A side seen only beyond the segment's end is never established: no crossing into the span below.
    assert run(analytics, [(330, 150)] * 3 + [(290, 250)] * 3, track_id=4) == []
    # Control: the same start and end straight through the segment counts.
    assert kinds(run(analytics, [(200, 150)] * 3 + [(250, 250)] * 3, track_id=3)) == [("cross", "forward")]


def test_first_seen_side_is_no_crossing():
    analytics = RegionAnalytics([], [line()], LABELS)
    assert run(analytics, [(200, 250)] * 5) == []


# -- zones ------------------------------------------------------------------------------------------


def test_zone_enter_only_after_min_frames_inside():
    analytics = RegionAnalytics([zone(min_frames=3)], [], LABELS)
    # Two frames inside then out: too short for an enter.
    assert run(analytics, [(50, 50), (200, 200), (200, 200), (50, 50), (50, 50), (50, 50)]) == []
    events = run(analytics, [(200, 200)] * 5, start=10)
    assert [(e["event"], e["frame_index"]) for e in events] == [("enter", 12)]
    # First seen inside: enters after min_frames too.
    first_inside = run(analytics, [(150, 150)] * 3, track_id=2, start=20)
    assert [(e["event"], e["track_id"], e["frame_index"]) for e in first_inside] == [("enter", 2, 22)]
    assert analytics.snapshot()["zones"]["z"]["occupancy"] == 2


def test_zone_exit_with_dwell_time_and_one_dwell_event():
    analytics = RegionAnalytics([zone(min_frames=2, dwell_s=5.0)], [], LABELS)
    path = [(50, 50)] * 2 + [(200, 200)] * 12 + [(50, 50)] * 3 + [(200, 200)] * 3
    events = run(analytics, path, dt=1.0)
    assert [e["event"] for e in events] == ["enter", "dwell", "exit", "enter"]
    enter, dwell, exit_, again = events
    assert enter["time"] == 3.0
    assert dwell["time"] == 8.0 and dwell["dwell_s"] == 5.0  # once, although inside until frame 13
    assert exit_["frame_index"] == 15 and exit_["dwell_s"] == 12.0 and exit_["reason"] == "left"
    assert again["frame_index"] == 18
    assert analytics.snapshot()["zones"]["z"] == {"occupancy": 1, "entered": 2, "exited": 1, "dwells": 1}


def test_track_ended_exits_with_reason_and_forgets_the_track():
    analytics = RegionAnalytics([zone(min_frames=1), zone("other", min_frames=1, polygon=[(0, 0), (50, 0), (50, 50)])], [line()], LABELS)
    run(analytics, [(200, 150)] * 3, track_id=7, dt=0.5)
    assert analytics.snapshot()["zones"]["z"]["occupancy"] == 1
    events = analytics.track_ended(7, 10.0, 40)
    assert events == [{
        "event": "exit", "zone": "z", "track_id": 7, "class_id": 0, "label": "person", "frame_index": 40, "time": 10.0,
        "point": [200.0, 150.0], "dwell_s": 10.0, "reason": "track_ended",
    }]
    assert analytics.snapshot()["zones"]["z"] == {"occupancy": 0, "entered": 1, "exited": 1, "dwells": 0}
    assert analytics.track_ended(7, 11.0, 41) == []
    # Forgotten: the same id again starts afresh (first side established, no crossing from old state).
    assert kinds(run(analytics, [(200, 250)] * 3, track_id=7, start=50)) == [("enter", None)]


def test_tracks_absent_for_long_are_expired():
    analytics = RegionAnalytics([zone(min_frames=1)], [], LABELS, stale_frames=20)
    run(analytics, [(200, 200)] * 2, track_id=3)  # entered at t = 0, last seen at t = 1
    events = []
    for index in range(2, 600):
        events += analytics.update([obj(4, 50, 50)], index, float(index), W, H)
    assert [(e["event"], e["track_id"], e["reason"], e["dwell_s"]) for e in events] == [("exit", 3, "expired", 1.0)]
    assert analytics.snapshot()["zones"]["z"]["occupancy"] == 0
    assert analytics.track_ended(3, 700.0, 700) == []  # nothing left of it
    assert analytics.track_ended(4, 700.0, 700) == []  # seen every frame: kept, outside the zone


def test_tentative_and_lost_objects_never_count():
    analytics = RegionAnalytics([zone(min_frames=1)], [line(min_frames=1)], LABELS)
    for state in ("tentative", "lost"):
        assert run(analytics, [(200, 150), (200, 250)] * 10, track_id=9, state=state) == []
    assert analytics.snapshot()["zones"]["z"] == {"occupancy": 0, "entered": 0, "exited": 0, "dwells": 0}
    # A confirmed track that then coasts keeps its state: coasting frames are not observations.
    hysteresis = RegionAnalytics([zone(min_frames=3)], [], LABELS)
    run(hysteresis, [(200, 200)] * 3, track_id=1)
    assert run(hysteresis, [(50, 50)] * 10, track_id=1, start=3, state="lost") == []
    assert hysteresis.snapshot()["zones"]["z"]["occupancy"] == 1


def test_class_filters():
    analytics = RegionAnalytics([zone(min_frames=1, classes=["car"])], [line(min_frames=1, classes=["dog", "car"])], LABELS)
    path = [(200, 150), (200, 250)]
    assert run(analytics, path, track_id=1, class_id=0) == []  # person
    assert run(analytics, path, track_id=2, class_id=7) == []  # an id the labels do not name
    events = run(analytics, path, track_id=3, class_id=1)
    assert [(e["event"], e["label"], e["class_id"]) for e in events] == [("enter", "car", 1), ("cross", "car", 1)]
    unfiltered = RegionAnalytics([zone(min_frames=1)], [], LABELS)
    assert [e["label"] for e in run(unfiltered, [(200, 200)], track_id=2, class_id=7)] == ["class_7"]


def test_normalised_coordinates_scale_with_the_frame_size():
    config = zone(min_frames=1, coordinates="normalized", polygon=[(0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0)])
    analytics = RegionAnalytics([config], [], LABELS)
    assert analytics.update([obj(1, 400, 300)], 0, 0.0, 640, 480) != []  # (320..640, 240..480)
    assert analytics.update([obj(2, 400, 300)], 1, 1.0, 1280, 720) == []  # now (640..1280, 360..720)
    assert [e["event"] for e in analytics.update([obj(2, 900, 500)], 2, 2.0, 1280, 720)] == ["enter"]
    line_config = line(min_frames=1, coordinates="normalized", points=((0.0, 0.5), (1.0, 0.5)))
    lines = RegionAnalytics([], [line_config], LABELS)
    lines.update([obj(1, 100, 200)], 0, 0.0, 640, 480)
    assert lines.update([obj(1, 100, 260)], 1, 1.0, 640, 480) != []  # across y = 240
    assert lines.update([obj(1, 100, 330)], 2, 2.0, 1280, 720) != []  # back above y = 360: backward


def test_reconfigure_keeps_unchanged_regions_and_restarts_edited_ones():
    keep, edit, gone = zone("keep", min_frames=1), zone("edit", min_frames=1), zone("gone", min_frames=1)
    analytics = RegionAnalytics([keep, edit, gone], [line("count", min_frames=1)], LABELS)
    run(analytics, [(200, 150), (200, 250)], track_id=1)
    before = analytics.snapshot()
    assert before["zones"]["keep"]["occupancy"] == before["zones"]["edit"]["entered"] == 1
    assert before["lines"]["count"]["forward"] == 1
    edited = zone("edit", min_frames=2)
    analytics.reconfigure([zone("keep", min_frames=1), edited, zone("new", min_frames=1)], [line("count", min_frames=1)])
    after = analytics.snapshot()
    assert after["zones"]["keep"] == before["zones"]["keep"]
    assert after["zones"]["edit"] == after["zones"]["new"] == {"occupancy": 0, "entered": 0, "exited": 0, "dwells": 0}
    assert "gone" not in after["zones"] and after["lines"]["count"] == {"forward": 1, "backward": 0}
    # The next frames: no re-enter in "keep" (its state was kept); the edited and new zones are new.
    events = run(analytics, [(200, 250)] * 2, track_id=1, start=2)
    assert [(e["event"], e["zone"], e["frame_index"]) for e in events] == [("enter", "new", 2), ("enter", "edit", 3)]
    # The unchanged line kept its established side: going back counts as a backward crossing.
    assert kinds(run(analytics, [(200, 150)], track_id=1, start=4)) == [("cross", "backward")]


def test_events_have_a_stable_key_order_and_json_values():
    analytics = RegionAnalytics([zone(min_frames=1, dwell_s=1.0)], [line(min_frames=1)], LABELS)
    events = run(analytics, [(200.04, 150.06), (200.04, 150.06), (200, 250), (50, 50)])
    events += analytics.track_ended(1, 9.0, 9)
    head = ["track_id", "class_id", "label", "frame_index", "time", "point"]
    orders = {
        "enter": ["event", "zone", *head], "dwell": ["event", "zone", *head, "dwell_s"],
        "exit": ["event", "zone", *head, "dwell_s", "reason"], "cross": ["event", "line", "direction", *head],
    }
    assert sorted({e["event"] for e in events}) == ["cross", "dwell", "enter", "exit"]
    for event in events:
        assert list(event) == orders[event["event"]]
        assert json.loads(json.dumps(event)) == event
        assert all(type(v) in (str, int, float, list) for v in event.values())
    assert events[0]["point"] == [200.0, 150.1]


def test_many_tracks_and_snapshot_counts():
    analytics = RegionAnalytics([zone(min_frames=2), zone("all", min_frames=1, polygon=[(0, 0), (640, 0), (640, 480), (0, 480)])], [line()], LABELS)
    objects = [obj(track_id, 110 + track_id, 150) for track_id in range(1, 151)]  # more than the first capacity
    for index in range(3):
        analytics.update(objects, index, float(index), W, H)
    moved = [obj(track_id, 110 + track_id, 250) for track_id in range(1, 151)]
    for index in range(3, 6):
        analytics.update(moved, index, float(index), W, H)
    for track_id in range(1, 51):
        analytics.track_ended(track_id, 6.0, 6)
    snap = analytics.snapshot()
    assert snap["zones"]["z"] == {"occupancy": 100, "entered": 150, "exited": 50, "dwells": 0}
    assert snap["zones"]["all"] == {"occupancy": 100, "entered": 150, "exited": 50, "dwells": 0}
    # Tracks 1..150 sit at x = 111..260, all within the segment x = 100..300: every one crossed.
    assert snap["lines"]["l"] == {"forward": 150, "backward": 0}
