"""Wiring and lifecycle: build every stage in order, run until stopped or done, shut down in reverse.

Start order: model + backend (fails fast on a bad model), pipeline, warm-up batch, publisher (binds; a
port in use fails before any camera is touched), scheduler, then one reader per source. Shutdown (one
path for SIGTERM, SIGINT and "all sources ended"): stop the readers, let the scheduler drain what was
already captured within ``daemon.drain_timeout_s``, publish end-of-stream for every source and a final
heartbeat, close the socket with its linger so the last messages leave. Exit code 0.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import __version__
from .engine.lifecycle import EngineProvider
from .config import Config, EngineConfig
from .entities import EndOfStream
from .framequeue import Multiplexer
from .publisher import Publisher
from .redact import mask_url
from .scheduler import Scheduler, warm_up
from .sources import SourceReader
from .stats import SourceStats

__all__ = ["Daemon", "model_id"]

log = logging.getLogger("trtstream.service")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_id(path: Path, explicit: str | None) -> tuple[str, str]:
    """(model id shown in messages, full sha256 of the model file)."""
    sha = file_sha256(path)
    return explicit or f"{path.stem}@{sha[:12]}", sha


def _metadata_names(details: dict[str, Any]) -> list[str] | None:
    """Class names from Ultralytics-style ONNX metadata (``names: {0: 'person', ...}``), if present."""
    raw = details.get("metadata", {}).get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def configure_device_work(backend, pipeline, engine: EngineConfig) -> None:
    """Move work to the GPU where the backend can take it (before slots are created): the pipeline's
    output reduction (fewer bytes back, less Python per frame) and, per ``engine.preprocess``, the
    preprocessing (uint8 frames to the device, one NVRTC kernel writes the input tensor)."""
    if hasattr(backend, "enable_device_reduction") and hasattr(pipeline, "device_reduce") and len(backend.info.outputs) == 1:
        backend.enable_device_reduction(pipeline.device_reduce, pipeline.reduced_shape)
    capable = hasattr(backend, "enable_gpu_preprocessing") and hasattr(pipeline, "plan")
    if engine.preprocess == "gpu" and not capable:
        log.warning("engine.preprocess = 'gpu' but the %s backend cannot; preprocessing on the CPU", backend.info.name)
    if capable and engine.preprocess in ("gpu", "auto"):
        width, height = engine.max_frame_size
        backend.enable_gpu_preprocessing(pipeline.normalizer, pipeline.pad_grey, width * height * 3)
        log.info("preprocessing on the GPU (frames up to %dx%d)", width, height)


class Daemon:
    """One running trtstream instance."""

    def __init__(self, config: Config):
        self.config = config
        self.instance_id = uuid.uuid4().hex
        self.started = threading.Event()  # set once serving (engine loaded, warmed up, publishing)
        self._stop = threading.Event()
        self._started_at = time.monotonic()
        self._provider: EngineProvider | None = None
        self._scheduler: Scheduler | None = None
        self._publisher: Publisher | None = None
        self._readers: list[SourceReader] = []
        self.source_stats: dict[str, SourceStats] = {}

    def request_stop(self) -> None:
        """Ask for a clean shutdown (signal handlers call this; it only sets an event)."""
        self._stop.set()

    def run(self) -> int:
        config = self.config
        model_name, model_sha = model_id(config.model.path, config.model.id)
        self._provider = provider = EngineProvider(config.model, config.engine)
        backend = provider.start()
        scheduler: Scheduler | None = None
        try:
            from pipelines import create_pipeline

            info = backend.info
            pipeline = create_pipeline(config.model, info, _metadata_names(info.details))
            model_info = {"id": model_name, "sha256": model_sha, "pipeline": pipeline.kind}
            configure_device_work(backend, pipeline, config.engine)
            mux = Multiplexer()
            for source in config.enabled_sources:
                self.source_stats[source.id] = SourceStats(source.id, mask_url(source.uri), source.resolved_kind.value)
            queues = {
                s.id: mux.add_queue(s.id, s.queue_size, s.effective_drop_policy) for s in config.enabled_sources
            }
            self._publisher = publisher = Publisher(
                config.publisher, self.instance_id, model_info, self.source_stats, self._heartbeat_body
            )
            self._scheduler = scheduler = Scheduler(
                mux,
                backend,
                pipeline,
                publisher.submit,
                self.source_stats,
                max_batch=config.engine.max_batch,
                max_wait_s=config.engine.max_wait_ms / 1000,
                slots=config.engine.streams * 2,  # double buffering per stream
            )
            scheduler.on_backend_switched = provider.mark_switched
            if config.engine.warmup:
                seconds = scheduler.warm_up()
                log.info("warm-up batch of %d took %.3fs", scheduler.max_batch, seconds)
            publisher.start()
            log.info(
                "trtstream %s serving model %s with %s %s on %s, max batch %d, %d source(s), instance %s",
                __version__, model_name, info.name, info.version, info.device, scheduler.max_batch,
                len(queues), self.instance_id,
            )
            if not publisher.wait_for_subscribers(
                config.publisher.wait_for_subscribers, config.publisher.wait_for_subscribers_timeout_s
            ):
                log.warning("no subscriber after %.0fs; starting anyway", config.publisher.wait_for_subscribers_timeout_s)
            scheduler.start()
            provider.set_on_ready(self._switch_to)
            self._readers = [SourceReader(s, queues[s.id], self.source_stats[s.id]) for s in config.enabled_sources]
            for reader in self._readers:
                reader.start()
            self.started.set()
            self._wait_until_done(scheduler)
            return self._shutdown(scheduler, publisher)
        finally:
            provider.close()
            (scheduler.backend if scheduler is not None else backend).close()

    def _switch_to(self, backend) -> None:
        """A background build finished (on its thread): warm the new engine up off the hot path, then let
        the scheduler swap it in between two batches."""
        try:
            seconds = warm_up(backend, self._scheduler.max_batch)
            log.info("new %s engine warmed up in %.3fs", backend.info.name, seconds)
            self._scheduler.replace_backend(backend)
        except Exception as exc:  # an incompatible engine must not take the daemon down
            log.error("cannot switch to the new engine: %s", exc)
            backend.close()

    def _wait_until_done(self, scheduler: Scheduler) -> None:
        while not self._stop.wait(0.2):
            if scheduler.finished.is_set():
                if self.config.daemon.exit_when_sources_end:
                    log.info("every source has ended")
                    return
                log.info("every source has ended; idle until stopped (daemon.exit_when_sources_end = false)")
                self._stop.wait()
                return

    def _shutdown(self, scheduler: Scheduler, publisher: Publisher) -> int:
        log.info("stopping: draining in-flight frames")
        for reader in self._readers:
            reader.stop()
        drained = scheduler.join(self.config.daemon.drain_timeout_s)
        if not drained:
            log.warning("drain timeout (%.1fs) reached; abandoning queued frames", self.config.daemon.drain_timeout_s)
            scheduler.abort()
            scheduler.join(5.0)
            for reader in self._readers:
                if reader.queue.finished is False:
                    publisher.submit(EndOfStream(reader.config.id, "shutdown", "drain timeout"))
        for reader in self._readers:
            if not reader.join(2.0):
                log.warning("source %s: reader did not stop in time (blocked in a read)", reader.config.id)
        publisher.stop()
        totals = {k: (s.frames_captured, s.frames_published, s.frames_dropped) for k, s in self.source_stats.items()}
        log.info("stopped; per source (captured, published, dropped): %s", totals)
        return 0

    def _heartbeat_body(self) -> dict[str, Any]:
        scheduler = self._scheduler
        info = scheduler.backend.info if scheduler else None
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "version": __version__,
            "backend": info.describe() if info else None,
            "engine": self._provider.status() if self._provider else None,
            "pipeline": scheduler.stats.snapshot() if scheduler else None,
            "sources": [stats.snapshot() for stats in self.source_stats.values()],
        }
