"""Prometheus metrics (daemon/metrics.py): served on a free loopback port, scraped over real HTTP with
urllib, parsed with prometheus_client's own parser."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.errors import UserError
from daemon.metrics import LATENCY_BUCKETS, GpuMemory, Metrics, MetricsInputs
from daemon.stats import BatcherSeconds, CompleterSeconds, PipelineStats, PublisherStats, SourceStats


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def daemon_stats():
    sources = {
        "cam1": SourceStats("cam1", "rtsp://u:***@cam", "stream", state="running", frames_captured=120, frames_dropped=7, frames_stale=4, frames_inferred=110, frames_published=100, inference_errors=3, reconnects=2),
        "door": SourceStats("door", "/v/door.mp4", "file", state="backoff"),
    }
    pipeline = PipelineStats(batches=30, frames=110, inference_errors=1, busy_slots=2, queued_frames=5,
                             batcher=BatcherSeconds(waiting_for_slot=12.5), completer=CompleterSeconds(waiting_for_device=40.25))
    publisher = PublisherStats(sent=150, dropped_queue_full=4, dropped_socket=6, queue_depth=9)
    return sources, pipeline, publisher


@pytest.fixture
def served(daemon_stats, free_port):
    sources, pipeline, publisher = daemon_stats
    clock = FakeClock()
    gpu = {"memory": GpuMemory(512 * 2**20, 8 * 2**30)}
    inputs = MetricsInputs(
        sources=lambda: sources,
        pipeline=lambda: pipeline,
        publisher=lambda: publisher,
        backend=lambda: {"name": "tensorrt", "version": "10.3.0", "device": "Orin", "max_batch": 8},
        gpu_memory=lambda: gpu["memory"],
        gc=lambda: {"collections": [900, 80, 3], "pause_s": [0.05, 0.02, 0.12], "longest_pause_ms": [0.4, 1.5, 61.0], "frozen": 74000},
    )
    metrics = Metrics(inputs, clock=clock)
    port = metrics.start(free_port)
    assert port == free_port
    yield metrics, port, clock, gpu
    metrics.stop()


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` from a real HTTP scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, sample_name: str, /, **labels) -> float:
    return samples[sample_name][tuple(sorted(labels.items()))]


def test_scrape_reads_the_stats_objects(served, daemon_stats):
    metrics, port, _clock, _gpu = served
    samples = scrape(port)
    assert value(samples, "trtstream_frames_captured_total", source="cam1") == 120
    assert value(samples, "trtstream_frames_dropped_total", source="cam1") == 7
    assert value(samples, "trtstream_frames_stale_total", source="cam1") == 4
    assert value(samples, "trtstream_gc_collections_total", generation="2") == 3
    assert value(samples, "trtstream_gc_pause_seconds_total", generation="2") == 0.12
    assert value(samples, "trtstream_gc_longest_pause_seconds", generation="2") == 0.061
    assert value(samples, "trtstream_gc_frozen_objects") == 74000
    assert value(samples, "trtstream_frames_inferred_total", source="cam1") == 110
    assert value(samples, "trtstream_frames_published_total", source="cam1") == 100
    assert value(samples, "trtstream_inference_errors_total", source="cam1") == 3
    assert value(samples, "trtstream_source_reconnects_total", source="cam1") == 2
    assert value(samples, "trtstream_frames_captured_total", source="door") == 0
    assert value(samples, "trtstream_source_state", source="cam1", state="running") == 1
    assert value(samples, "trtstream_source_state", source="cam1", state="backoff") == 0
    assert value(samples, "trtstream_source_state", source="door", state="backoff") == 1
    assert value(samples, "trtstream_batches_total") == 30
    assert value(samples, "trtstream_batch_errors_total") == 1
    assert value(samples, "trtstream_inflight_slots") == 2
    assert value(samples, "trtstream_queue_depth", queue="frames") == 5
    assert value(samples, "trtstream_publisher_queue_depth") == 9
    assert value(samples, "trtstream_scheduler_seconds_total", thread="batcher", phase="waiting_for_slot") == 12.5
    assert value(samples, "trtstream_scheduler_seconds_total", thread="completer", phase="waiting_for_device") == 40.25
    assert value(samples, "trtstream_scheduler_seconds_total", thread="completer", phase="handing_over") == 0
    assert value(samples, "trtstream_publisher_dropped_total", reason="queue_full") == 4
    assert value(samples, "trtstream_publisher_dropped_total", reason="socket") == 6
    assert value(samples, "trtstream_backend_info", name="tensorrt", version="10.3.0", device="Orin", max_batch="8") == 1
    assert value(samples, "trtstream_gpu_memory_used_bytes") == 512 * 2**20
    assert value(samples, "trtstream_gpu_memory_total_bytes") == 8 * 2**30
    assert value(samples, "trtstream_metrics_collect_errors_total") == 0
    assert "process_resident_memory_bytes" in samples
    assert "python_gc_objects_collected_total" not in samples, "a dedicated registry, not the global one"

    # the counters are read at scrape time: a change shows up in the next scrape without any call
    daemon_stats[0]["cam1"].frames_captured += 30
    assert value(scrape(port), "trtstream_frames_captured_total", source="cam1") == 150


def test_fps_is_the_rate_between_scrapes(served, daemon_stats):
    _metrics, port, clock, _gpu = served
    cam = daemon_stats[0]["cam1"]
    assert value(scrape(port), "trtstream_source_fps", source="cam1") == 0
    cam.frames_published += 50
    clock.now += 2.0
    assert value(scrape(port), "trtstream_source_fps", source="cam1") == 25.0
    cam.frames_published += 10
    clock.now += 0.1  # too close to the last reading: the last rate stands
    assert value(scrape(port), "trtstream_source_fps", source="cam1") == 25.0
    assert cam.fps_meter.rate(cam.frames_published) > 0, "the heartbeat's own meter is left alone"


def test_stage_latency_histograms(served):
    metrics, port, _clock, _gpu = served
    t0 = 1_700_000_000.0
    metrics.observe_result("cam1", t0, t0 + 0.004, t0 + 0.030, t0 + 0.032)
    metrics.observe_result("cam1", t0, t0 + 0.004, t0 + 0.030, t0 + 0.500)
    metrics.observe_result("cam1", t0, t0 - 0.5, t0 + 0.030, t0 + 0.032)  # a clock step backwards
    samples = scrape(port)
    name = "trtstream_stage_latency_seconds"
    assert value(samples, f"{name}_count", source="cam1", stage="capture_to_publish") == 3
    assert value(samples, f"{name}_bucket", source="cam1", stage="capture_to_publish", le="0.035") == 2
    assert value(samples, f"{name}_bucket", source="cam1", stage="capture_to_publish", le="0.5") == 3
    assert value(samples, f"{name}_bucket", source="cam1", stage="capture_to_preprocess", le="0.001") == 1, "negative spans count as 0"
    assert value(samples, f"{name}_sum", source="cam1", stage="preprocess_to_infer") == pytest.approx(0.026 * 2 + 0.53)
    les = {dict(k)["le"] for k in samples[f"{name}_bucket"]}
    assert len(les) == len(LATENCY_BUCKETS) + 1


def test_cpu_backend_has_no_gpu_metrics(served):
    _metrics, port, _clock, gpu = served
    gpu["memory"] = None
    samples = scrape(port)
    assert "trtstream_gpu_memory_used_bytes" not in samples and "trtstream_frames_captured_total" in samples


def test_a_failing_input_is_counted_not_a_500(free_port):
    def broken():
        raise RuntimeError("stats went away")

    metrics = Metrics(MetricsInputs(sources=broken, publisher=lambda: PublisherStats(sent=3)))
    port = metrics.start(free_port)
    try:
        samples = scrape(port)
        assert value(samples, "trtstream_metrics_collect_errors_total") == 1
        assert value(samples, "trtstream_publisher_messages_sent_total") == 3
    finally:
        metrics.stop()


def test_refuses_a_non_loopback_address_unless_allowed():
    metrics = Metrics(MetricsInputs(sources=dict))
    with pytest.raises(UserError, match="non-loopback"):
        metrics.start(0, "0.0.0.0")
    with pytest.raises(UserError, match="non-loopback"):
        metrics.start(0, "camera-gateway.local")
    port = metrics.start(0, "0.0.0.0", allow_remote=True)
    try:
        assert "trtstream_build_info" in scrape(port)
    finally:
        metrics.stop()


def test_port_in_use_is_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            Metrics(MetricsInputs(sources=dict)).start(port)


def test_analytics_counters_are_scraped_per_source_zone_and_line(free_port):
    snapshot = {"door": {"tracks": {"active": 2, "started": 9, "ended": 5},
                         "zones": {"lobby": {"occupancy": 2, "entered": 7, "exited": 5, "dwells": 1}},
                         "lines": {"gate": {"forward": 4, "backward": 3}}}}
    metrics = Metrics(MetricsInputs(sources=lambda: {}, analytics=lambda: snapshot))
    port = metrics.start(free_port)
    try:
        samples = scrape(port)
    finally:
        metrics.stop()
    assert value(samples, "trtstream_zone_occupancy", source="door", zone="lobby") == 2
    assert value(samples, "trtstream_zone_events_total", source="door", zone="lobby", event="enter") == 7
    assert value(samples, "trtstream_zone_events_total", source="door", zone="lobby", event="dwell") == 1
    assert value(samples, "trtstream_line_crossings_total", source="door", line="gate", direction="backward") == 3
    assert value(samples, "trtstream_tracks_started_total", source="door") == 9
    assert value(samples, "trtstream_tracks_active", source="door") == 2
