"""Overload is measured and shed at the sources (issue 13, item 3): the real daemon on the real detector
(ONNX Runtime on the CPU), fed by a synthetic camera far faster than the model (1000 frames/s), and by one
it keeps up with. The heartbeat's ``overload`` says which is which and by how much, and no result is
dropped after inference."""

from __future__ import annotations

from daemon.client import ResultSubscriber

from .conftest import all_ended, collect, detector_config


def _serving(messages):
    """The periodic heartbeats from the first one with a published result on."""
    beats = [m for m in messages if m.type == "heartbeat" and not m.header["final"]]
    first = next((i for i, m in enumerate(beats) if m.header["sources"] and m.header["sources"][0]["frames_published"] > 0), len(beats))
    return beats[first:]


def _run(start_daemon, port: int, uri: str, beats: int):
    config = detector_config(f'[[sources]]\nid = "cam"\nuri = "{uri}"\n', port) + "\n[daemon]\nexit_when_sources_end = false\n"
    with ResultSubscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        daemon = start_daemon(config)
        # the first beats cover start-up (model load, warm-up); judge the later ones
        messages = collect(subscriber, lambda ms: len(_serving(ms)) >= beats, timeout=90, daemon=daemon)
        daemon.terminate()
        collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    return _serving(messages)


def test_a_camera_faster_than_the_model_is_reported_overloaded_and_shed_at_the_source(start_daemon, free_port):
    beats = _run(start_daemon, free_port, "synthetic:320x240@1000", beats=4)
    later = beats[1:]  # each beat covers the time since the one before
    assert all(b.header["overload"]["overloaded"] for b in later), [b.header["overload"] for b in later]
    assert all(b.header["overload"]["dropped_fraction"] > 0.5 for b in later)
    assert all(b.header["overload"]["dropped_per_s"] > 100 for b in later)
    last = beats[-1].header
    assert last["sources"][0]["frames_dropped"] > 0, "dropped where the frames come in"
    assert last["publisher"]["dropped_queue_full"] == 0, "never after inference"


def test_a_camera_the_model_keeps_up_with_is_not_overloaded(start_daemon, free_port):
    beats = _run(start_daemon, free_port, "synthetic:320x240@4", beats=4)
    for beat in beats[1:]:
        assert beat.header["overload"] == {"overloaded": False, "dropped_fraction": 0.0, "dropped_per_s": 0.0}, beat.header["overload"]


def test_a_source_restarted_by_a_reload_is_counted_from_zero():
    """A reload that restarts a source gives it new stats (counters from zero): the meter must count what
    the new one did, not the fall of the totals."""
    from daemon.stats import OverloadMeter, SourceStats

    meter = OverloadMeter()
    old, steady = SourceStats("cam", "x", "stream"), SourceStats("other", "y", "stream")
    old.frames_captured, old.frames_dropped = 100, 50
    steady.frames_captured = 100
    meter.reading([old, steady])
    new = SourceStats("cam", "x", "stream")
    new.frames_captured, new.frames_dropped = 10, 5
    steady.frames_captured = 110
    reading = meter.reading([new, steady])
    assert reading["dropped_fraction"] == 0.25 and reading["overloaded"], reading  # 5 of the 20 frames since
