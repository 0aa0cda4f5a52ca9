"""[tracking], [[zones]] and [[lines]] in the config: one line per mistake, naming the key."""

from __future__ import annotations

import pytest

from daemon.cli import _format_message
from daemon.client import Message
from daemon.config import parse_config
from daemon.errors import ConfigError

BASE = {"sources": [{"id": "door", "uri": "synthetic:64x48"}], "model": {"path": "m.onnx", "pipeline": "detection"}}


def problems(**extra) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, **extra})
    return str(caught.value).splitlines()


def test_defaults_track_detection_sources_and_put_events_on_their_own_prefix():
    config = parse_config(BASE)
    assert config.tracks(config.sources[0]) and config.publisher.events_prefix == "trtstream-events"
    classify = parse_config({**BASE, "model": {"path": "m.onnx", "pipeline": "classification"}})
    assert not classify.tracks(classify.sources[0])


@pytest.mark.parametrize("extra, key, text", [
    ({"zones": [{"name": "z", "source": "gate", "polygon": [[0, 0], [9, 0], [9, 9]]}]}, "zones[0].source", "no source has the id 'gate'"),
    ({"zones": [{"name": "z", "source": "door", "polygon": [[0, 0], [9, 0], [18, 0]]}]}, "zones[0]", "the polygon has no area"),
    ({"zones": [{"name": "z", "source": "door", "coordinates": "normalized", "polygon": [[0, 0], [2, 0], [1, 1]]}]}, "zones[0]", "within 0..1"),
    ({"lines": [{"name": "l", "source": "door", "points": [[5, 5], [5, 5]]}]}, "lines[0].points", "the same"),
    ({"lines": [{"name": "l", "source": "door", "points": [[0, 0], [9, 9]]}, {"name": "l", "source": "door", "points": [[0, 9], [9, 0]]}]},
     "lines[1].name", "used twice"),
    ({"tracking": {"low_threshold": 0.7}}, "tracking", "low_threshold"),
    ({"tracking": {"enabled": False}, "zones": [{"name": "z", "source": "door", "polygon": [[0, 0], [9, 0], [9, 9]]}]}, "zones[0].source", "not tracked"),
    ({"sources": [{"id": "door", "uri": "synthetic:64x48", "tracking": False, "infer_every": 2}]}, "sources[0](id='door').infer_every", "needs tracking"),
    ({"zones": [{"name": "z", "source": "door", "polygon": [[0, 0], [9, 0], [9, 9]], "dwel_s": 3}]}, "zones[0].dwel_s", "unknown key"),
])
def test_each_mistake_is_one_line_naming_its_key(extra, key, text):
    (line,) = problems(**extra)
    assert f": {key}: " in line and text in line, line


def test_subscribe_prints_events_and_track_ids():
    event = Message("trtstream-events/door/", {"type": "event", "source_id": "door", "event": "cross", "line": "gate", "direction": "forward",
                                              "label": "person", "track_id": 12, "frame_index": 141})
    assert _format_message(event, False) == "door: cross line gate forward: person #12 at frame 141"
    result = Message("trtstream/door/", {"type": "result", "source_id": "door", "seq": 3, "frame": {"index": 3},
                                         "timestamps": {"captured": 1.0, "published": 1.01},
                                         "detections": [{"label": "person", "score": 0.9, "box": [1, 2, 3, 4], "track_id": 7, "track_state": "confirmed", "matched_now": True},
                                                        {"label": "car", "score": 0.5, "box": [1, 2, 3, 4], "track_id": None, "track_state": None, "matched_now": True}]})
    assert "person #7 0.90" in _format_message(result, False) and "car 0.50" in _format_message(result, False)
