"""The daemon end to end, as a real subprocess, with real ZeroMQ subscribers, real models and a real video.

Every message received here is validated against docs/schema/message-v1.schema.json (``collect``).
"""

from __future__ import annotations


from daemon.client import ResultSubscriber
from daemon.netaddr import free_loopback_port

from .conftest import all_ended, asset, collect, detector_config



def results(messages, source: str | None = None):
    return [m for m in messages if m.type == "result" and (source is None or m.source_id == source)]


def test_bikes_video_through_the_daemon_to_a_subscriber(start_daemon, free_port):
    config = detector_config(f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\n', free_port)
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    frames = results(messages, "bikes")
    assert [m.header["frame"]["index"] for m in frames] == list(range(250)), "an unpaced file loses no frame"
    assert [m.header["seq"] for m in frames] == list(range(250))
    labels = {d["label"] for m in frames for d in m.header["detections"]}
    assert {"person", "bicycle"} <= labels
    for message in frames:
        for detection in message.header["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 272
        stamps = message.header["timestamps"]
        assert stamps["captured"] <= stamps["preprocessed"] <= stamps["inferred"] <= stamps["published"]
    (eos,) = [m for m in messages if m.type == "eos"]
    assert eos.header["reason"] == "end_of_file" and eos.header["seq"] == 250
    assert eos.header["frames_captured"] == eos.header["frames_published"] == 250
    heartbeats = [m for m in messages if m.type == "heartbeat"]
    assert heartbeats and heartbeats[0].header["backend"]["name"] == "onnxruntime"
    assert subscriber.missed == {}


def test_classifier_labels_chelsea_as_a_cat(start_daemon, free_port):
    config = f"""
[[sources]]
id = "chelsea"
uri = "{asset('media/chelsea.png')}"
[model]
path = "{asset('models/efficientnet_lite0.onnx')}"
pipeline = "classification"
labels = "{asset('labels/imagenet.txt')}"
[model.preprocess]
scale = 1.0
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
interpolation = "cubic"
[publisher]
endpoints = ["tcp://127.0.0.1:{free_port}"]
wait_for_subscribers = 1
[publisher.thumbnail]
enabled = true
max_width = 200
"""
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    (result,) = results(messages)
    top = result.header["classifications"][0]
    assert top["class_id"] in (281, 282, 285) and "cat" in top["label"], result.header["classifications"]
    assert result.header["payloads"] == [{"kind": "thumbnail", "content_type": "image/jpeg", "width": 200, "height": 133}]
    assert result.payloads[0][:2] == b"\xff\xd8", "the payload is a JPEG"


def test_a_source_that_fails_does_not_stop_the_others_and_secrets_stay_masked(start_daemon, free_port):
    dead_port = free_loopback_port()
    sources = f"""
[[sources]]
id = "missing"
uri = "/nonexistent/cam.mp4"
[[sources]]
id = "dead-camera"
uri = "rtsp://admin:hunter2@127.0.0.1:{dead_port}/live?token=s3cr3t"
[sources.reconnect]
initial_delay_s = 0.05
max_delay_s = 0.2
max_attempts = 3
open_timeout_s = 2
[[sources]]
id = "bikes"
uri = "{asset('media/bikes.mp4')}"
max_frames = 60
"""
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(sources, free_port))
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert len(results(messages, "bikes")) == 60
    ends = {m.source_id: m.header for m in messages if m.type == "eos"}
    assert ends["missing"]["reason"] == "error" and "file not found" in ends["missing"]["detail"]
    assert ends["dead-camera"]["reason"] == "error"
    assert ends["bikes"]["reason"] == "max_frames"
    everything = daemon.stderr + "".join(str(m.header) for m in messages)
    assert "hunter2" not in everything and "s3cr3t" not in everything
    assert "admin:***@" in daemon.stderr
    dead = [s for m in messages if m.type == "heartbeat" for s in m.header["sources"] if s["id"] == "dead-camera"]
    assert dead and all("hunter2" not in s["uri"] for s in dead)


def test_a_subscriber_that_never_reads_does_not_hold_the_pipeline_back(start_daemon, free_port):
    """Counters, not timings: every frame is captured, inferred and published although one subscriber
    never reads; that subscriber's own queue overflowed (gaps in its seq), the reading one saw none."""
    import zmq

    config = detector_config(
        f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\n',
        free_port,
        publisher="send_hwm = 50\n[publisher.thumbnail]\nenabled = true\nmax_width = 640\njpeg_quality = 100",
        wait_for_subscribers="2",  # the stalled one and the reader, before the first frame: the reader sees all 250
    )
    context = zmq.Context.instance()
    stalled = context.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 2)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"trtstream/bikes/")
    stalled.connect(f"tcp://127.0.0.1:{free_port}")
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as reader:
            daemon = start_daemon(config)
            messages = collect(reader, all_ended, timeout=120)
            assert daemon.wait(30) == 0, daemon.stderr
        (eos,) = [m for m in messages if m.type == "eos"]
        assert eos.header["frames_captured"] == 250 and eos.header["frames_published"] == 250
        assert len(results(messages)) == 250 and reader.missed == {}
        final = [m for m in messages if m.type == "heartbeat" and m.header["final"]]
        assert final and final[0].header["sources"][0]["frames_dropped"] == 0
        gc_counts = final[0].header["gc"]
        assert gc_counts["frozen"] > 10000, gc_counts  # daemon.gc_freeze: the libraries and the model are out of collections
        assert sum(gc_counts["collections"]) > 0 and len(gc_counts["longest_pause_ms"]) == 3, gc_counts
        # Now read what the stalled subscriber kept: far fewer than 250, with gaps.
        kept = []
        while stalled.poll(500):
            kept.append(stalled.recv_multipart())
        assert 0 < len(kept) < 200, len(kept)
    finally:
        stalled.close(linger=0)


def test_sigterm_exits_0_after_publishing_in_flight_results(start_daemon, free_port):
    config = detector_config(
        f'[[sources]]\nid = "cam"\nuri = "{asset("media/bikes.mp4")}"\nloop = true\npace = true\nqueue_size = 8\n',
        free_port,
    )
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        collect(subscriber, lambda ms: len(results(ms)) >= 20, timeout=60)
        daemon.terminate()
        messages = collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    (eos,) = [m for m in messages if m.type == "eos"]
    assert eos.header["reason"] == "shutdown"
    published_total = eos.header["frames_published"]
    accepted = eos.header["frames_captured"] - eos.header["frames_dropped"]
    assert published_total == accepted, "every frame that was queued when SIGTERM came was published"
    assert subscriber.missed == {}
    assert eos.header["seq"] == published_total
    assert "received SIGTERM" in daemon.stderr
    final = [m for m in messages if m.type == "heartbeat" and m.header["final"]]
    assert final, "a final heartbeat is sent before exit"


def test_subscribe_command_prints_json_lines_for_the_selected_source(start_daemon, free_port):
    import json
    import subprocess
    import sys

    from .conftest import REPO

    sources = f"""
[[sources]]
id = "cam1"
uri = "{asset('media/bikes.mp4')}"
max_frames = 12
[[sources]]
id = "cam10"
uri = "synthetic:320x240@200"
max_frames = 30
"""
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "daemon", "subscribe", f"tcp://127.0.0.1:{free_port}", "--source", "cam1", "--json", "--until-eos"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        daemon = start_daemon(detector_config(sources, free_port))
        out, err = subscriber.communicate(timeout=120)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, err
    headers = [json.loads(line) for line in out.splitlines()]
    sources_seen = {h.get("source_id") for h in headers if h["type"] != "heartbeat"}
    assert sources_seen == {"cam1"}, "subscribing to cam1 must not deliver cam10"
    assert [h["frame"]["index"] for h in headers if h["type"] == "result"] == list(range(12))
    assert headers[-1]["type"] == "eos" and headers[-1]["reason"] == "max_frames"
