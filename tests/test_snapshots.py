"""Event snapshots (issue 14, item 2): the best picture of each track, attached to its ``track`` message and
its events. The keeping rule on real bikes frames with hand-made tracks, then the real daemon on
bikes.mp4: every JPEG is the object's crop from the frame the message names, pixel for pixel (after
JPEG), taken from the box the result of that frame published for that track."""

from __future__ import annotations

import cv2
import numpy as np

from daemon.analytics.snapshots import BestShots
from daemon.analyticsconfig import SnapshotConfig
from daemon.client import ResultSubscriber
from daemon.tracking.objects import TrackedObject

from .conftest import all_ended, asset, bikes_frames, collect, detector_config


def tracked(track_id: int, box, score: float, matched: bool = True) -> TrackedObject:
    return TrackedObject(track_id, "confirmed" if matched else "lost", matched, 0 if matched else None, tuple(box), 1, score, 5, 5)


def test_the_best_picture_is_kept_by_score_and_size_and_gone_tracks_are_forgotten():
    first, second = bikes_frames((0, 60))
    shots = BestShots(SnapshotConfig(enabled=True, margin=0.0, max_width=64))
    shots.update([tracked(1, (100, 50, 200, 150), 0.5), tracked(2, (10, 10, 40, 40), 0.9)], first, 0)
    kept = shots.snapshot(1)
    assert (kept.width, kept.height, kept.frame_index, kept.score) == (64, 64, 0, 0.5)  # 100x100 crop scaled to 64
    shots.update([tracked(1, (100, 50, 150, 100), 0.6)], second, 60)  # more confident, but a quarter of the area: worse
    assert shots.snapshot(1).frame_index == 0
    shots.update([tracked(1, (100, 50, 200, 150), 0.9, matched=False)], second, 61)  # a coasting prediction is no picture
    assert shots.snapshot(1).frame_index == 0
    shots.update([tracked(1, (90, 40, 210, 160), 0.8)], second, 62)
    better = shots.snapshot(1)
    assert better.frame_index == 62 and better is shots.snapshot(1)  # encoded once per improvement
    decoded = cv2.imdecode(np.frombuffer(better.jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(second[40:161, 90:211], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.astype(int) - expected).mean() < 8
    second[:] = 0  # the frame's buffer is reused: the kept picture is a copy
    shots.snapshot(1)
    assert shots._shots[1].image.any()
    shots.keep_only({2})
    assert shots.snapshot(1) is None and shots.snapshot(2) is not None and len(shots) == 1
    whole = BestShots(SnapshotConfig(enabled=True, content="frame", max_width=320))
    whole.update([tracked(3, (10, 10, 60, 60), 0.7)], first, 0)
    assert (whole.snapshot(3).width, whole.snapshot(3).height) == (320, round(first.shape[0] * 320 / first.shape[1]))


def test_track_and_event_messages_carry_the_crop_of_their_best_frame(start_daemon, free_port):
    source = f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 150\n'
    config = detector_config(source, free_port) + (
        "\n[tracking]\nenabled = true\n[snapshots]\nenabled = true\nmargin = 0.1\nmax_width = 4096\njpeg_quality = 95\n"
        '[[lines]]\nname = "road"\nsource = "cam"\ncoordinates = "normalized"\npoints = [[0.5, 0.3], [0.5, 1.0]]\n'
        "[control]\nenabled = false\n"
    )  # fmt: skip
    daemon = start_daemon(config)
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}", events=True) as subscriber:
        messages = collect(subscriber, all_ended, timeout=240, daemon=daemon)
    assert daemon.wait(30) == 0, daemon.stderr
    tracks = [m for m in messages if m.type == "track"]
    events = [m for m in messages if m.type == "event"]
    assert tracks and events, "bikes.mp4's first 150 frames end tracks and cross the line"
    boxes = {(m.header["frame"]["index"], d["track_id"]): d["box"] for m in messages if m.type == "result"
             for d in m.header["detections"] if d.get("track_id") is not None}  # fmt: skip
    frames = dict(zip(range(150), bikes_frames(tuple(range(150)))))
    checked = 0
    for message in tracks + events:
        payload = message.header.get("payloads")
        if not payload:
            continue
        (meta,) = payload
        assert meta["kind"] == "snapshot" and meta["content_type"] == "image/jpeg" and len(message.payloads) == 1
        picture = cv2.imdecode(np.frombuffer(message.payloads[0], np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == (meta["height"], meta["width"])
        x1, y1, x2, y2 = boxes[(meta["frame_index"], message.header["track_id"])]
        dx, dy = (x2 - x1) * 0.1, (y2 - y1) * 0.1
        frame = frames[meta["frame_index"]]
        crop = frame[int(max(0, y1 - dy)) : int(min(frame.shape[0], y2 + dy + 1)), int(max(0, x1 - dx)) : int(min(frame.shape[1], x2 + dx + 1))]
        assert crop.shape == picture.shape, (crop.shape, picture.shape)
        assert np.abs(crop.astype(int) - picture).mean() < 6, message.header
        checked += 1
    assert checked >= len(tracks), f"only {checked} of {len(tracks)} track messages had a snapshot"
