"""ByteTracker, its Kalman filter and its assignment solvers, on synthetic boxes (no model, no video)."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.analyticsconfig import TrackingConfig
from daemon.tracking import assignment
from daemon.tracking.bytetrack import PATH_POINTS, ByteTracker, iou_matrix
from daemon.tracking.kalman import BatchKalman, xyah_to_xyxy, xyxy_to_xyah


def box_at(x: float, y: float, w: float = 40, h: float = 80) -> list[float]:
    return [x, y, x + w, y + h]


def step(tracker: ByteTracker, boxes, scores=None, classes=None, frame: int = 0):
    boxes = np.array(boxes, dtype=float).reshape(-1, 4)
    scores = np.full(len(boxes), 0.9) if scores is None else np.array(scores, dtype=float)
    classes = np.zeros(len(boxes), dtype=int) if classes is None else np.array(classes)
    return tracker.update(boxes, scores, classes, frame, frame / 30)


def config(**overrides) -> TrackingConfig:
    return TrackingConfig(**overrides)


# -- assignment ----------------------------------------------------------------------------------------


CONTESTED = [
    # Row 0 prefers column 0, but so does row 1, whose only other choice is poor: the optimum differs
    # from greedy here, so this one is only for lap against scipy.
    (np.array([[0.1, 0.2], [0.15, 0.9]]), 0.95, [(0, 1), (1, 0)]),
]
AGREEING = [
    (np.array([[0.1, 0.9, 0.8], [0.9, 0.2, 0.9], [0.7, 0.9, 0.3]]), 0.5, [(0, 0), (1, 1), (2, 2)]),
    # (0,1)+(1,0) matches more pairs but costs more than (0,0) alone with the rest unmatched.
    (np.array([[0.1, 0.4], [0.3, 0.9], [0.95, 0.95]]), 0.5, [(0, 0)]),
    (np.array([[0.6, 0.7], [0.8, 0.9]]), 0.5, []),
    (np.array([[0.2, 0.5, 0.9, 0.9], [0.4, 0.1, 0.9, 0.9], [0.9, 0.9, 0.9, 0.3]]), 0.5, [(0, 0), (1, 1), (2, 3)]),
    (np.zeros((0, 3)), 0.5, []),
]


@pytest.mark.parametrize("cost, max_cost, expected", AGREEING)
def test_every_solver_gives_the_same_matches(cost, max_cost, expected):
    solvers = assignment.available_solvers()
    assert "greedy" in solvers
    for name in solvers:
        matches, rows, cols = assignment.solve(cost, max_cost, name)
        assert matches == expected, name
        assert rows == [r for r in range(cost.shape[0]) if r not in {r for r, _ in matches}]
        assert cols == [c for c in range(cost.shape[1]) if c not in {c for _, c in matches}]
    assert assignment.linear_assignment(cost, max_cost)[0] == expected


def test_solvers_on_exact_expectations():
    cost = np.array([[0.1, 0.9, 0.8], [0.9, 0.2, 0.9], [0.7, 0.9, 0.3]])
    for name in assignment.available_solvers():
        assert assignment.solve(cost, 0.5, name) == ([(0, 0), (1, 1), (2, 2)], [], [])
        assert assignment.solve(cost, 0.25, name) == ([(0, 0), (1, 1)], [2], [2])
        # A pair exactly at the limit is accepted.
        assert assignment.solve(np.array([[0.5]]), 0.5, name) == ([(0, 0)], [], [])
        assert assignment.solve(np.array([[0.6, 0.7], [0.8, 0.9]]), 0.5, name) == ([], [0, 1], [0, 1])


@pytest.mark.parametrize("cost, max_cost, expected", CONTESTED)
def test_optimal_solvers_beat_greedy_where_rows_compete(cost, max_cost, expected):
    optimal = [name for name in assignment.available_solvers() if name != "greedy"]
    if not optimal:
        pytest.skip("neither lap nor scipy is installed")
    for name in optimal:
        assert assignment.solve(cost, max_cost, name)[0] == expected
    assert assignment.solve(cost, max_cost, "greedy")[0] == [(0, 0), (1, 1)]  # total 1.0, not 0.35


def test_lap_and_scipy_agree_on_random_matrices():
    if not {"lap", "scipy"} <= set(assignment.available_solvers()):
        pytest.skip("needs both lap and scipy")
    rng = np.random.default_rng(7)
    for _ in range(200):
        cost = rng.uniform(0, 1, size=(rng.integers(1, 12), rng.integers(1, 12)))
        a = assignment.solve(cost, 0.6, "lap")
        b = assignment.solve(cost, 0.6, "scipy")
        total = lambda m: sum(cost[r, c] for r, c in m) + 0.6 * (cost.shape[0] + cost.shape[1] - 2 * len(m)) / 2  # noqa: E731
        assert total(a[0]) == pytest.approx(total(b[0]))
        assert a == b


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="unknown solver"):
        assignment.solve(np.zeros((2, 2)), 0.5, "hungarian")  # type: ignore[arg-type]


def test_the_solver_is_chosen_at_import():
    assert assignment.SOLVER == assignment.available_solvers()[0]


# -- Kalman --------------------------------------------------------------------------------------------


def reference_kalman_steps(z0, measurements):
    """ByteTrack's KalmanFilter with its full 8x8 matrices: the block form must give the same numbers."""
    wp, wv = 1 / 20, 1 / 160
    F = np.eye(8)
    F[:4, 4:] = np.eye(4)
    H = np.eye(4, 8)
    mean = np.r_[z0, np.zeros(4)]
    h = z0[3]
    cov = np.diag(np.square([2 * wp * h, 2 * wp * h, 1e-2, 2 * wp * h, 10 * wv * h, 10 * wv * h, 1e-5, 10 * wv * h]))
    out = []
    for z in measurements:
        h = mean[3]
        Q = np.diag(np.square([wp * h, wp * h, 1e-2, wp * h, wv * h, wv * h, 1e-5, wv * h]))
        mean = F @ mean
        cov = F @ cov @ F.T + Q
        if z is not None:
            h = mean[3]
            R = np.diag(np.square([wp * h, wp * h, 1e-1, wp * h]))
            S = H @ cov @ H.T + R
            K = cov @ H.T @ np.linalg.inv(S)
            mean = mean + K @ (z - H @ mean)
            cov = cov - K @ S @ K.T
        out.append((mean.copy(), cov.copy()))
    return out


def test_block_kalman_equals_the_full_matrix_filter():
    rng = np.random.default_rng(3)
    z0 = np.array([100.0, 200.0, 0.5, 80.0])
    measurements = [None if i % 4 == 3 else z0 + [3 * i, -2 * i, 0, 0.5 * i] + rng.normal(0, 1, 4) * [1, 1, 0.01, 1] for i in range(1, 20)]
    kalman = BatchKalman()
    kalman.add(np.array([z0, z0 + 50]))  # a second track: rows must not mix
    for (mean, cov), z in zip(reference_kalman_steps(z0, measurements), measurements):
        kalman.predict()
        if z is not None:
            kalman.update(np.array([0]), z[None, :])
        np.testing.assert_allclose(kalman.means[0], mean, rtol=1e-9, atol=1e-9)
        blocks = kalman.blocks[0]
        np.testing.assert_allclose(blocks[0], np.diag(cov)[:4], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(blocks[1], np.diag(cov[:4, 4:]), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(blocks[2], np.diag(cov)[4:], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(kalman.means[1, 4:], 0)  # the other track never moved


def test_box_conversions_round_trip():
    boxes = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 1.0, 3.0]])
    np.testing.assert_allclose(xyah_to_xyxy(xyxy_to_xyah(boxes)), boxes)


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 1, 0], [0, 0, 0]])
    allowed = np.array([[False, True, True], [True, True, True]])
    np.testing.assert_allclose(iou_matrix(a, b, allowed), [[0, 1, 0], [0, 0, 0]])


# -- ByteTracker ---------------------------------------------------------------------------------------


def test_a_moving_box_keeps_its_id_and_is_confirmed_after_confirm_frames():
    tracker = ByteTracker(config(confirm_frames=3))
    states, ids = [], set()
    for frame in range(20):
        out = step(tracker, [box_at(100 + 5 * frame, 50 + 2 * frame)], frame=frame)
        (obj,) = out.objects
        states.append(obj.state)
        ids.add(obj.track_id)
        assert obj.matched_now and obj.detection == 0
        assert obj.box == tuple(box_at(100 + 5 * frame, 50 + 2 * frame))
        assert obj.age == frame + 1 and obj.hits == frame + 1
        assert out.ended == []
    assert ids == {1}
    assert states[:3] == ["tentative", "tentative", "confirmed"]
    assert set(states[3:]) == {"confirmed"}


def test_confirm_frames_one_confirms_at_once():
    tracker = ByteTracker(config(confirm_frames=1))
    (obj,) = step(tracker, [box_at(0, 0)]).objects
    assert obj.state == "confirmed" and obj.track_id == 1


def test_an_unmatched_tentative_track_is_dropped_without_a_summary():
    tracker = ByteTracker(config(confirm_frames=3))
    step(tracker, [box_at(0, 0)], frame=0)
    step(tracker, [box_at(2, 0)], frame=1)
    out = step(tracker, [], frame=2)
    assert out.objects == [] and out.ended == []
    assert len(tracker) == 0
    assert tracker.finish(1.0) == []
    (obj,) = step(tracker, [box_at(4, 0)], frame=3).objects
    assert obj.track_id == 2 and obj.state == "tentative"  # a new track, a new id


def run_until_confirmed(tracker, frames, x0=100.0, dx=6.0):
    out = None
    for frame in range(frames):
        out = step(tracker, [box_at(x0 + dx * frame, 100)], frame=frame)
    return out


def test_a_lost_track_coasts_on_its_prediction_then_ends_with_a_summary():
    tracker = ByteTracker(config(confirm_frames=2, lost_frames=5))
    run_until_confirmed(tracker, 10)
    last_x = None
    for frame in range(10, 15):  # five frames unmatched: coasting
        out = step(tracker, [], frame=frame)
        (obj,) = out.objects
        assert (obj.state, obj.matched_now, obj.detection, obj.track_id) == ("lost", False, None, 1)
        assert obj.hits == 10 and obj.age == frame + 1
        x1 = obj.box[0]
        assert last_x is None or x1 > last_x + 3  # the prediction keeps moving at about 6 px a frame
        last_x = x1
        assert out.ended == []
    assert last_x == pytest.approx(100 + 6 * 14, abs=3)
    out = step(tracker, [], frame=15)
    assert out.objects == []
    (summary,) = out.ended
    assert (summary.track_id, summary.reason, summary.first_frame, summary.last_frame, summary.frames) == (1, "lost", 0, 9, 10)
    assert summary.first_seen == 0 and summary.last_seen == pytest.approx(9 / 30)
    assert summary.best_score == pytest.approx(0.9)
    assert summary.path[0] == (120.0, 180.0) and summary.path[-1] == (100 + 6 * 9 + 20.0, 180.0)
    assert len(tracker) == 0


def test_a_lost_track_is_found_again_with_its_id():
    tracker = ByteTracker(config(confirm_frames=2, lost_frames=10))
    run_until_confirmed(tracker, 8)
    for frame in range(8, 11):
        assert step(tracker, [], frame=frame).objects[0].state == "lost"
    (obj,) = step(tracker, [box_at(100 + 6 * 11, 100)], frame=11).objects
    assert (obj.track_id, obj.state, obj.matched_now, obj.hits) == (1, "confirmed", True, 9)


def test_ids_are_never_reused_after_a_track_ends():
    tracker = ByteTracker(config(confirm_frames=1, lost_frames=1))
    seen = []
    for round_ in range(4):
        base = 40 * round_
        for frame in range(base, base + 5):
            seen.extend(o.track_id for o in step(tracker, [box_at(500 * (round_ % 2), 0)], frame=frame).objects)
        step(tracker, [], frame=base + 5)
        ended = step(tracker, [], frame=base + 6).ended
        assert [s.track_id for s in ended] == [round_ + 1]
    assert sorted(set(seen)) == [1, 2, 3, 4]
    after = step(tracker, [box_at(0, 0)], frame=500).objects
    assert after[0].track_id == 5
    tracker.finish(20.0)
    assert step(tracker, [box_at(0, 0)], frame=501).objects[0].track_id == 6  # finish() does not reset ids


def test_two_classes_never_share_a_track():
    tracker = ByteTracker(config(confirm_frames=1))
    first = step(tracker, [box_at(100, 100)], classes=[0], frame=0).objects
    # Same place, other class: not a match; a new track; the class-0 track coasts.
    out = step(tracker, [box_at(100, 100)], classes=[1], frame=1).objects
    by_id = {o.track_id: o for o in out}
    assert first[0].track_id == 1
    assert by_id[1].state == "lost" and by_id[1].class_id == 0
    assert by_id[2].matched_now and by_id[2].class_id == 1
    out = step(tracker, [box_at(100, 100), box_at(101, 100)], classes=[1, 0], frame=2).objects
    assert {(o.track_id, o.class_id, o.detection) for o in out} == {(1, 0, 1), (2, 1, 0)}


def test_untracked_classes_are_ignored():
    tracker = ByteTracker(config(confirm_frames=1), tracked_classes={2})
    out = step(tracker, [box_at(0, 0), box_at(200, 0)], classes=[1, 2]).objects
    assert [(o.class_id, o.detection) for o in out] == [(2, 1)]


def test_two_crossing_objects_keep_their_ids():
    tracker = ByteTracker(config(confirm_frames=2))
    ids_by_direction: dict[str, set[int]] = {"right": set(), "left": set()}
    for frame in range(40):
        right = box_at(100 + 10 * frame, 100)
        left = box_at(490 - 10 * frame, 104)
        out = step(tracker, [left, right], frame=frame)  # the order of detections must not matter
        for obj in out.objects:
            assert obj.matched_now
            ids_by_direction["left" if obj.detection == 0 else "right"].add(obj.track_id)
    assert ids_by_direction == {"left": {1}, "right": {2}} or ids_by_direction == {"left": {2}, "right": {1}}


def test_low_score_detections_extend_a_track_but_never_start_one():
    tracker = ByteTracker(config(confirm_frames=2, high_threshold=0.5, low_threshold=0.1, lost_frames=3))
    for frame in range(10):
        assert step(tracker, [box_at(300, 300)], scores=[0.3], frame=frame).objects == []
    assert len(tracker) == 0
    run_until_confirmed(tracker, 5)
    for frame in range(5, 30):  # far beyond lost_frames: kept alive by low-score matches
        (obj,) = step(tracker, [box_at(100 + 6 * frame, 100)], scores=[0.2], frame=frame).objects
        assert (obj.track_id, obj.state, obj.matched_now, obj.score) == (1, "confirmed", True, 0.2)
    # Below low_threshold a detection is nothing at all.
    assert step(tracker, [box_at(100 + 6 * 30, 100)], scores=[0.05], frame=30).objects[0].state == "lost"


def test_high_but_not_new_track_score_detections_start_nothing():
    tracker = ByteTracker(config(high_threshold=0.5, new_track_threshold=0.6))
    assert step(tracker, [box_at(0, 0)], scores=[0.55]).objects == []


def test_predict_frames_move_confirmed_tracks_without_changing_state_or_counting_misses():
    tracker = ByteTracker(config(confirm_frames=2, lost_frames=2))
    run_until_confirmed(tracker, 6)  # frames 0..5, moving 6 px a frame
    step(tracker, [box_at(0, 600)], frame=6)  # a new tentative track elsewhere; track 1 misses once (lost)
    before = None
    for frame in range(7, 17):  # ten predicted frames: more than lost_frames, and nothing ends
        out = tracker.predict(frame, frame / 30)
        assert out.ended == []
        (obj,) = out.objects  # the tentative track is not returned
        assert (obj.track_id, obj.state, obj.matched_now, obj.detection) == (1, "lost", False, None)
        assert before is None or obj.box[0] > before
        before = obj.box[0]
    (obj,) = step(tracker, [box_at(100 + 6 * 17, 100)], frame=17).objects
    assert (obj.track_id, obj.state, obj.matched_now) == (1, "confirmed", True)
    for frame in range(18, 20):
        (obj,) = tracker.predict(frame, 0).objects
        assert obj.state == "confirmed" and not obj.matched_now


def test_predict_returns_nothing_for_tentative_tracks():
    tracker = ByteTracker(config(confirm_frames=3))
    step(tracker, [box_at(0, 0)])
    assert tracker.predict(1, 0.0).objects == []
    (obj,) = step(tracker, [box_at(0, 0)], frame=2).objects
    assert obj.state == "tentative" and obj.hits == 2


def test_finish_ends_confirmed_and_lost_tracks_and_empties_the_tracker():
    tracker = ByteTracker(config(confirm_frames=2, lost_frames=10))
    for frame in range(5):
        step(tracker, [box_at(0, 0), box_at(300, 0)], frame=frame)
    step(tracker, [box_at(0, 0), box_at(600, 600)], frame=5)  # track 2 lost, a tentative third
    ended = tracker.finish(9.5)
    assert sorted((s.track_id, s.reason) for s in ended) == [(1, "end_of_stream"), (2, "end_of_stream")]
    assert len(tracker) == 0
    assert tracker.predict(6, 0).objects == []
    assert tracker.finish(10.0) == []


def test_the_path_is_bounded_and_spans_the_whole_track():
    tracker = ByteTracker(config(confirm_frames=1))
    for frame in range(1000):
        step(tracker, [box_at(frame, 0)], frame=frame)
    (summary,) = tracker.finish(0)
    assert 8 <= len(summary.path) <= PATH_POINTS
    assert summary.path[0] == (20.0, 80.0) and summary.path[-1] == (999 + 20.0, 80.0)
    xs = [p[0] for p in summary.path]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    gaps = np.diff(xs[:-1])
    assert gaps.max() == gaps.min()  # evenly spread (the last point aside)
    for frames in (1, 2, 15, 16, 17, 33):
        tracker = ByteTracker(config(confirm_frames=1))
        for frame in range(frames):
            step(tracker, [box_at(frame, 0)], frame=frame)
        (summary,) = tracker.finish(0)
        assert len(summary.path) == min(frames, PATH_POINTS) or len(summary.path) <= PATH_POINTS
        assert summary.path[0][0] == 20.0 and summary.path[-1][0] == frames - 1 + 20.0


def test_many_objects_keep_their_ids():
    rng = np.random.default_rng(1)
    n = 30
    grid = np.stack(np.meshgrid(np.arange(6) * 150.0, np.arange(5) * 200.0), axis=-1).reshape(-1, 2)
    velocity = rng.uniform(-2, 2, size=(n, 2))
    tracker = ByteTracker(config(confirm_frames=2))
    track_of: dict[int, int] = {}
    for frame in range(60):
        centres = grid + velocity * frame
        boxes = np.concatenate([centres - [20, 40], centres + [20, 40]], axis=1) + rng.normal(0, 1, size=(n, 4))
        order = rng.permutation(n)
        out = step(tracker, boxes[order], frame=frame)
        assert len(out.objects) == n and all(o.matched_now for o in out.objects)
        for obj in out.objects:
            assert track_of.setdefault(int(order[obj.detection]), obj.track_id) == obj.track_id
    assert sorted(track_of.values()) == list(range(1, n + 1))


def test_mismatched_input_lengths_are_refused():
    tracker = ByteTracker(config())
    with pytest.raises(ValueError, match="differ in length"):
        tracker.update(np.zeros((2, 4)), np.zeros(3), np.zeros(2), 0, 0.0)


def two_tracks_on_one_object(tracker: ByteTracker) -> None:
    """Frames 0-2 one box; frames 3-4 a second box 4 px beside it (a detector's double box, IoU 0.9 with
    the first): a second track is born on the same object and confirmed."""
    for frame in range(3):
        step(tracker, [box_at(100, 100, 100, 200)], [0.9], frame=frame)
    for frame in (3, 4):
        step(tracker, [box_at(100, 100, 100, 200), box_at(104, 100, 100, 200)], [0.9, 0.9], frame=frame)


def test_a_duplicate_track_on_one_object_ends_when_the_object_is_seen_once_again():
    tracker = ByteTracker(config(confirm_frames=2))
    two_tracks_on_one_object(tracker)
    result = step(tracker, [box_at(100, 100, 100, 200)], [0.9], frame=5)
    assert [(o.track_id, o.matched_now) for o in result.objects] == [(1, True)], "the younger duplicate does not coast on"
    assert [s.track_id for s in result.ended] == [2]


def test_when_the_younger_duplicate_has_the_detection_the_older_track_takes_it():
    tracker = ByteTracker(config(confirm_frames=2))
    two_tracks_on_one_object(tracker)
    result = step(tracker, [box_at(104, 100, 100, 200)], [0.9], frame=5)
    assert [(o.track_id, o.matched_now, o.detection) for o in result.objects] == [(1, True, 0)], "the id does not flip to the duplicate"
    assert [s.track_id for s in result.ended] == [2]


def test_a_lost_track_takes_a_low_score_detection():
    tracker = ByteTracker(config(confirm_frames=1))
    step(tracker, [box_at(100, 100)], [0.9], frame=0)
    step(tracker, [], [], frame=1)  # missed: lost
    result = step(tracker, [box_at(101, 100)], [0.3], frame=2)  # back, weakly detected
    assert [(o.track_id, o.state, o.matched_now) for o in result.objects] == [(1, "confirmed", True)]


# -- several sources in one tracker ----------------------------------------------------------------------
def _moving_scene(rng, objects: int, frames: int):
    """Per frame: boxes, scores and classes of ``objects`` boxes moving with noise, some missed."""
    position = rng.uniform([0, 0], [600, 400], (objects, 2))
    velocity = rng.normal(0, 4, (objects, 2))
    size = rng.uniform([20, 40], [60, 120], (objects, 2))
    classes = rng.integers(0, 2, objects)
    sequence = []
    for _ in range(frames):
        position = position + velocity
        centre = position + rng.normal(0, 1.5, (objects, 2))
        seen = rng.random(objects) > 0.1
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)[seen]
        sequence.append((boxes, rng.uniform(0.05, 1.0, objects)[seen], classes[seen]))
    return sequence


def _canonical(objects_by_frame, summaries):
    """Objects and summaries with track ids renumbered by first appearance (a shared tracker numbers
    across sources, one tracker per source from 1)."""
    names: dict[int, int] = {}

    def name(track_id: int) -> int:
        return names.setdefault(track_id, len(names))

    frames = [[(name(o.track_id), o.state, o.matched_now, o.detection, tuple(np.round(o.box, 6)), o.class_id, o.age, o.hits)
               for o in objects] for objects in objects_by_frame]
    ended = [(name(s.track_id), s.reason, s.first_frame, s.last_frame, s.frames, round(s.best_score, 9)) for s in summaries]
    return frames, ended


def test_one_tracker_over_several_sources_gives_each_what_its_own_tracker_would():
    """Sources arrive in rounds of one frame each, some sources missing from a round, some frames skipped
    by the model (infer_every): per source the same objects and summaries as a tracker of its own."""
    from daemon.tracking.bytetrack import FrameDetections

    rng = np.random.default_rng(7)
    sources = {g: _moving_scene(rng, objects, 60) for g, objects in enumerate((5, 12, 0, 30))}
    cfg = config(confirm_frames=2, lost_frames=5)
    own = {g: ByteTracker(cfg) for g in sources}
    shared = ByteTracker(cfg)
    position = {g: 0 for g in sources}
    own_out = {g: [] for g in sources}
    shared_out = {g: [] for g in sources}
    own_ended = {g: [] for g in sources}
    shared_ended = {g: [] for g in sources}
    while any(position[g] < len(seq) for g, seq in sources.items()):
        members = [g for g in sources if position[g] < len(sources[g]) and rng.random() < 0.7]
        frames = []
        for g in members:
            boxes, scores, classes = sources[g][position[g]]
            inferred = position[g] % 4 != 3
            frames.append(FrameDetections(g, boxes, scores, classes, position[g], position[g] / 25, inferred))
            step_own = (own[g].update(boxes, scores, classes, position[g], position[g] / 25) if inferred
                        else own[g].predict(position[g], position[g] / 25))
            own_out[g].append(step_own.objects)
            own_ended[g].extend(step_own.ended)
            position[g] += 1
        for frame, step_shared in zip(frames, shared.step(frames)):
            shared_out[frame.group].append(step_shared.objects)
            shared_ended[frame.group].extend(step_shared.ended)
    for g in sources:
        own_ended[g].extend(own[g].finish(99.0))
        shared_ended[g].extend(shared.finish_group(g, 99.0))
        assert _canonical(shared_out[g], shared_ended[g]) == _canonical(own_out[g], own_ended[g]), f"source {g}"
    ids = [o.track_id for g in sources for objects in shared_out[g] for o in objects]
    by_source = [{o.track_id for objects in shared_out[g] for o in objects} for g in sources]
    assert sum(len(s) for s in by_source) == len(set(ids)), "no id is shared between sources"
    assert len(shared) == 0


def test_a_step_refuses_two_frames_of_one_source():
    from daemon.tracking.bytetrack import FrameDetections

    frame = FrameDetections(3, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), 0, 0.0)
    with pytest.raises(ValueError, match="one frame per group"):
        ByteTracker(config()).step([frame, frame])
