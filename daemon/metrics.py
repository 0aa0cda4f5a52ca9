"""Prometheus metrics: the daemon's existing stats, read at scrape time, plus per-stage latency histograms.

Counters and gauges are not mirrored into prometheus-client objects on the hot path. The stats objects
(``SourceStats``, ``PipelineStats``, ``PublisherStats``) already count everything with one writer each,
so :class:`StatsCollector` reads them when Prometheus scrapes: no per-frame cost, and the numbers
cannot drift apart. Only latency distributions need per-frame work, done by :meth:`Metrics.observe_result`
on the publisher thread (four histogram observations per result through cached children).

Everything lives in a dedicated ``CollectorRegistry``: the global registry would mix in whatever else
the process imports, and two daemons in one test process would collide. The HTTP endpoint binds to
loopback unless remote access is allowed explicitly. A collector error is logged and counted; it never
turns a scrape into an HTTP 500 and never reaches the pipeline.

The HTTP server is prometheus_client's WSGI app on our own bounded thread-per-connection server
(:mod:`daemon.httpserve`), because ``start_http_server`` waits for a request forever: half-sent requests
held a thread and a descriptor each until the process ran out of descriptors (issue 11).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .httpserve import BoundedHttpService
from .netaddr import check_listen_host
from .stats import PipelineStats, PublisherStats, SourceStats

__all__ = ["GpuMemory", "MetricsInputs", "StatsCollector", "Metrics", "LATENCY_BUCKETS", "SOURCE_STATES"]

log = logging.getLogger("trtstream.metrics")

# 1 ms .. 10 s: sub-frame stages on a GPU sit in the first buckets, a CPU detector batch around 50-500 ms,
# and anything beyond a few seconds is a stall worth seeing as such.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
# daemon.sources.SourceState's values; every one is exported (0 or 1) so "== 1" alerts work per state.
SOURCE_STATES = ("starting", "connecting", "running", "backoff", "ended", "failed", "stopped")
STAGES = ("capture_to_preprocess", "preprocess_to_infer", "infer_to_publish", "capture_to_publish")
REQUEST_TIMEOUT_S = 5.0  # a scrape's request is a few hundred bytes: Prometheus sends it at once
MAX_CONNECTIONS = 32  # Prometheus scrapes one at a time; a few humans with curl on top


class GpuMemory(NamedTuple):
    used_bytes: int
    total_bytes: int | None = None


def _none() -> None:
    return None


@dataclass(frozen=True)
class MetricsInputs:
    """Where the collector reads at scrape time; each callable is cheap and may return None before start."""

    sources: Callable[[], Mapping[str, SourceStats]]
    pipeline: Callable[[], PipelineStats | None] = _none
    publisher: Callable[[], PublisherStats | None] = _none
    backend: Callable[[], Mapping[str, Any] | None] = _none  # BackendInfo.describe()
    gpu_memory: Callable[[], GpuMemory | None] = _none  # None on the CPU
    analytics: Callable[[], Mapping[str, Any] | None] = _none  # daemon.analytics.stage.Analytics.snapshot()
    gc: Callable[[], Mapping[str, Any] | None] = _none  # daemon.gcpolicy.GcPauses.snapshot()


@dataclass
class _Rate:
    """Frames per second between two scrapes at least ``min_interval_s`` apart (the heartbeat's
    ``RateMeter`` is advanced by the heartbeat only; sharing it would corrupt both)."""

    at: float
    count: int = 0
    value: float = 0.0

    def update(self, count: int, now: float, min_interval_s: float = 1.0) -> float:
        elapsed = now - self.at
        if elapsed >= min_interval_s:
            self.value = max(0.0, (count - self.count) / elapsed)
            self.count, self.at = count, now
        return self.value


class StatsCollector(Collector):
    """A custom collector: every metric is built from the stats objects when Prometheus scrapes."""

    def __init__(self, inputs: MetricsInputs, clock: Callable[[], float] = time.monotonic):
        self._inputs = inputs
        self._clock = clock
        self._rates: dict[str, _Rate] = {}
        self._lock = threading.Lock()  # two concurrent scrapes must not interleave rate updates
        self._errors = 0

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: metric names depend on what the stats hold at scrape time

    def collect(self) -> Iterator[Metric]:
        metrics: list[Metric] = []
        for part in (self._sources, self._pipeline, self._publisher, self._backend, self._gpu, self._analytics, self._gc):
            try:
                metrics.extend(part())
            except Exception:
                self._errors += 1
                log.exception("metrics: collecting %s failed", part.__name__.strip("_"))
        errors = CounterMetricFamily("trtstream_metrics_collect_errors", "Scrapes in which reading some stats failed.")
        errors.add_metric([], self._errors)
        metrics.append(errors)
        build = InfoMetricFamily("trtstream_build", "trtstream version.")
        build.add_metric([], {"version": __version__})
        metrics.append(build)
        yield from metrics

    def _gc(self) -> list[Metric]:
        """Python's garbage collections and what they cost (every thread waits while one runs)."""
        snapshot = self._inputs.gc()
        if not snapshot:
            return []
        collections = CounterMetricFamily("trtstream_gc_collections", "Python garbage collections.", labels=["generation"])
        pauses = CounterMetricFamily("trtstream_gc_pause_seconds", "Time spent in Python garbage collections (all threads wait).",
                                     labels=["generation"])
        longest = GaugeMetricFamily("trtstream_gc_longest_pause_seconds", "The longest collection since start.", labels=["generation"])
        for generation in range(3):
            collections.add_metric([str(generation)], snapshot["collections"][generation])
            pauses.add_metric([str(generation)], snapshot["pause_s"][generation])
            longest.add_metric([str(generation)], snapshot["longest_pause_ms"][generation] / 1000)
        frozen = GaugeMetricFamily("trtstream_gc_frozen_objects", "Objects kept out of collections (daemon.gc_freeze).")
        frozen.add_metric([], snapshot["frozen"])
        return [collections, pauses, longest, frozen]

    def _analytics(self) -> list[Metric]:
        """Tracks, zone occupancy and event counters, and line crossings per tracked source."""
        snapshot = self._inputs.analytics() or {}
        tracks = CounterMetricFamily("trtstream_tracks_started", "Tracks started (tentative ones included).", labels=["source"])
        ended = CounterMetricFamily("trtstream_tracks_ended", "Confirmed tracks that ended (a track message each).", labels=["source"])
        active = GaugeMetricFamily("trtstream_tracks_active", "Tracks alive now.", labels=["source"])
        occupancy = GaugeMetricFamily("trtstream_zone_occupancy", "Confirmed tracks inside the zone now.", labels=["source", "zone"])
        zone_events = CounterMetricFamily("trtstream_zone_events", "Zone events since the zone was (re)defined.", labels=["source", "zone", "event"])
        crossings = CounterMetricFamily("trtstream_line_crossings", "Line crossings since the line was (re)defined.", labels=["source", "line", "direction"])
        for source, part in snapshot.items():
            tracks.add_metric([source], part["tracks"]["started"])
            ended.add_metric([source], part["tracks"]["ended"])
            active.add_metric([source], part["tracks"]["active"])
            for zone, counts in part["zones"].items():
                occupancy.add_metric([source, zone], counts["occupancy"])
                for event, key in (("enter", "entered"), ("exit", "exited"), ("dwell", "dwells")):
                    zone_events.add_metric([source, zone, event], counts[key])
            for line, counts in part["lines"].items():
                for direction in ("forward", "backward"):
                    crossings.add_metric([source, line, direction], counts[direction])
        return [tracks, ended, active, occupancy, zone_events, crossings]

    def _sources(self) -> list[Metric]:
        stats = list(self._inputs.sources().values())
        now = self._clock()

        def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["source"])
            for s in stats:
                family.add_metric([s.source_id], getattr(s, attr))
            return family

        fps = GaugeMetricFamily("trtstream_source_fps", "Results published per second, per source.", labels=["source"])
        state = GaugeMetricFamily("trtstream_source_state", "1 for the source's current state, else 0.", labels=["source", "state"])
        with self._lock:
            for s in stats:
                rate = self._rates.get(s.source_id)
                if rate is None:  # first sight: 0 until a second reading gives a rate
                    rate = self._rates[s.source_id] = _Rate(now, s.frames_published)
                fps.add_metric([s.source_id], round(rate.update(s.frames_published, now), 3))
        for s in stats:
            for name in SOURCE_STATES if s.state in SOURCE_STATES else (*SOURCE_STATES, s.state):
                state.add_metric([s.source_id, name], 1.0 if s.state == name else 0.0)
        return [
            fps,
            state,
            counter("trtstream_frames_captured", "Frames read from the source and queued.", "frames_captured"),
            counter("trtstream_frames_dropped", "Frames discarded by the source queue (drop_oldest).", "frames_dropped"),
            counter("trtstream_frames_stale", "Of the frames dropped, those shed as stale at the batcher's turn (stale_after_frames).", "frames_stale"),
            counter("trtstream_frames_inferred", "Frames with a decoded result.", "frames_inferred"),
            counter("trtstream_frames_published", "Results sent to subscribers.", "frames_published"),
            counter("trtstream_inference_errors", "Frames that failed preprocessing, inference or postprocessing.", "inference_errors"),
            counter("trtstream_source_reconnects", "Times a live source was reopened after it stopped delivering.", "reconnects"),
        ]

    def _pipeline(self) -> list[Metric]:
        stats = self._inputs.pipeline()
        if stats is None:
            return []
        batches = CounterMetricFamily("trtstream_batches", "Batches inferred.")
        batches.add_metric([], stats.batches)
        frames = CounterMetricFamily("trtstream_batch_frames", "Frames in inferred batches (mean batch = frames / batches).")
        frames.add_metric([], stats.frames)
        failed = CounterMetricFamily("trtstream_batch_errors", "Batches whose inference failed.")
        failed.add_metric([], stats.inference_errors)
        slots = GaugeMetricFamily("trtstream_inflight_slots", "Batches in flight (slots in use).")
        slots.add_metric([], stats.busy_slots)
        queued = GaugeMetricFamily("trtstream_queue_depth", "Items waiting in a queue.", labels=["queue"])
        queued.add_metric(["frames"], stats.queued_frames)
        seconds = CounterMetricFamily(
            "trtstream_scheduler_seconds", "Where the scheduler's two threads spend their time (what limits the pipeline).", labels=["thread", "phase"]
        )
        for thread, phases in (("batcher", stats.batcher), ("completer", stats.completer)):
            for phase, value in vars(phases).items():
                seconds.add_metric([thread, phase], value)
        return [batches, frames, failed, slots, queued, seconds]

    def _publisher(self) -> list[Metric]:
        stats = self._inputs.publisher()
        if stats is None:
            return []
        sent = CounterMetricFamily("trtstream_publisher_messages_sent", "Messages sent (results, ends, heartbeats).")
        sent.add_metric([], stats.sent)
        dropped = CounterMetricFamily("trtstream_publisher_dropped", "Messages dropped by the publisher.", labels=["reason"])
        dropped.add_metric(["queue_full"], stats.dropped_queue_full)
        dropped.add_metric(["socket"], stats.dropped_socket)
        depth = GaugeMetricFamily("trtstream_publisher_queue_depth", "Results waiting for the publisher thread.")
        depth.add_metric([], stats.queue_depth)
        waits = CounterMetricFamily("trtstream_publisher_queue_full_waits",
                                    "Hand-overs of results that waited for room in the publisher's queue (overload shed at the sources).")  # fmt: skip
        waits.add_metric([], stats.queue_full_waits)
        return [sent, dropped, depth, waits]

    def _backend(self) -> list[Metric]:
        info = self._inputs.backend()
        if not info:
            return []
        family = InfoMetricFamily("trtstream_backend", "The inference backend serving now (changes on an engine switch).")
        family.add_metric([], {key: str(value) for key, value in info.items() if value is not None})
        return [family]

    def _gpu(self) -> list[Metric]:
        memory = self._inputs.gpu_memory()
        if memory is None:
            return []
        used = GaugeMetricFamily("trtstream_gpu_memory_used_bytes", "GPU memory in use on the daemon's device.")
        used.add_metric([], memory.used_bytes)
        result: list[Metric] = [used]
        if memory.total_bytes is not None:
            total = GaugeMetricFamily("trtstream_gpu_memory_total_bytes", "GPU memory on the daemon's device.")
            total.add_metric([], memory.total_bytes)
            result.append(total)
        return result


class Metrics:
    """The daemon's registry, its HTTP endpoint and the latency histograms the publisher feeds."""

    request_timeout_s = REQUEST_TIMEOUT_S
    max_connections = MAX_CONNECTIONS

    def __init__(self, inputs: MetricsInputs, *, process_metrics: bool = True, clock: Callable[[], float] = time.monotonic):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(inputs, clock))
        if process_metrics:  # RSS, open fds, CPU: what a months-long soak watches for drift
            ProcessCollector(registry=self.registry)
        self._latency = Histogram(
            "trtstream_stage_latency_seconds",
            "Time between pipeline stages per result (wall clock stamps carried in each message).",
            ["source", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[str, tuple] = {}
        self._service: BoundedHttpService | None = None
        self.port: int | None = None

    def observe_result(
        self, source_id: str, t_captured: float, t_preprocessed: float, t_inferred: float, t_published: float
    ) -> None:
        """Record one published result's stage latencies (``time.time()`` stamps, as in the message).

        Called on the publisher thread for every result; a wall-clock step can make a difference
        negative, which is recorded as 0 rather than corrupting the histogram's sum."""
        children = self._children.get(source_id)
        if children is None:
            children = self._children[source_id] = tuple(self._latency.labels(source_id, stage) for stage in STAGES)
        spans = (t_preprocessed - t_captured, t_inferred - t_preprocessed, t_published - t_inferred, t_published - t_captured)
        for child, seconds in zip(children, spans):
            child.observe(max(0.0, seconds))

    def render(self) -> bytes:
        """The exposition text, as a scrape would return it."""
        return generate_latest(self.registry)

    def start(self, port: int, address: str = "127.0.0.1", *, allow_remote: bool = False) -> int:
        """Serve ``/metrics`` on its own thread; returns the bound port (``port=0`` picks a free one)."""
        check_listen_host(address, "metrics.address", allow_remote=allow_remote)
        self._service = BoundedHttpService("metrics", make_wsgi_app(self.registry), self.request_timeout_s, self.max_connections)
        self.port = self._service.start(address, port)
        log.info("metrics on http://%s:%d/metrics", address if ":" not in address else f"[{address}]", self.port)
        return self.port

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None
