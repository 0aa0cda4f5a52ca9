"""Wiring and lifecycle: build every stage in order, run until stopped or done, shut down in reverse.

Start order: model + backend (fails fast on a bad model), pipeline, warm-up batch, publisher (binds; a
port in use fails before any camera is touched), scheduler, then one reader per source. Shutdown (one
path for SIGTERM, SIGINT and "all sources ended"): stop the readers, let the scheduler drain what was
already captured within ``daemon.drain_timeout_s``, publish end-of-stream for every source and a final
heartbeat, close the socket with its linger so the last messages leave. Exit code 0, except
``EXIT_SOURCES_FAILED`` (3) when the daemon ends on its own because every source failed for good (each
ended with ``reason = "error"``): a supervisor must be able to tell "nothing could be read" from "the
files are done". A stop requested during start-up (while the model loads, during the warm-up, while
waiting for subscribers) is honoured at the next step that returns to Python: no source is started, exit 0.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import __version__
from .engine.cache import EngineLeases
from .engine.child import BuildCancelled
from .engine.lifecycle import EngineProvider
from .config import Config
from .gil import apply_switch_interval
from .control import ControlServer, LatestResults, default_control_endpoint
from .metrics import Metrics, MetricsInputs
from .notify import Notifier, extending_timeout, status_line
from .watchdog import WatchdogGate, WatchdogPinger, progress_from_stats
from .entities import EndOfStream
from .framequeue import Multiplexer
from .publisher import Publisher
from .errors import TrtstreamError
from .redact import mask_text, mask_url
from .analytics.stage import AnalyticsSettings, AnalyticsStage
from .analytics.workers import make_analytics
from .gcpolicy import GcPauses, freeze_heap, refreeze
from .scheduler import Scheduler, warm_up
from .serving import ServingUnit, build_unit
from .capture import AutoDecoderFactory, open_producer, resolve_decoder
from .gpu.nvdecproc import hosts as decoding_hosts
from .sinks import MessageSink
from .view import regions_by_source
from .view.hub import ViewHub
from .view.server import ViewServer
from .sources import SourceReader, SourceState
from .stats import OverloadMeter, SourceStats

__all__ = ["Daemon", "EXIT_SOURCES_FAILED"]

log = logging.getLogger("trtstream.service")

EXIT_SOURCES_FAILED = 3  # every source failed for good (0 ok, 1 failure at start, 2 invalid config)


READER_STOP_S = 2.0  # at a stop, how long the readers together may take to return from a blocking read
DECODING_STOP_S = 10.0
"""At a stop, how long the decoding processes may take to be reaped after the readers: a dozen NVDEC processes
tearing down their CUDA contexts took longer than the readers' 2 s at every 96-camera stop on the H200 (one
warning each time, for an ordinary stop); one that ignores SIGTERM is killed after 2 s."""


class Daemon:
    """One running trtstream instance."""

    def __init__(self, config: Config, config_path: Path | None = None):
        self.config = config
        self.config_path = config_path
        self.instance_id = uuid.uuid4().hex
        self.started = threading.Event()  # set once serving (engine loaded, warmed up, publishing)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started_at = time.monotonic()
        self._provider: EngineProvider | None = None
        self._retired_providers: list[EngineProvider] = []  # replaced by reloads; closed (waited for) at exit
        self._engine_leases = EngineLeases()  # cache leases of the engines serving: prune leaves them alone
        self._scheduler: Scheduler | None = None
        self._publisher: Publisher | None = None
        self._analytics: AnalyticsStage | None = None
        self._overload = OverloadMeter()  # read by the heartbeat's builder only (the publisher thread)
        self._gc = GcPauses()  # written by gc.callbacks (whichever thread collects), read by heartbeats and metrics
        self._froze = False
        self._mux = Multiplexer()
        self._readers: dict[str, SourceReader] = {}
        self.source_stats: dict[str, SourceStats] = {}  # written by the main thread only; other threads copy before iterating
        self.reload_status: dict[str, Any] = {"count": 0, "last_error": None}
        self.native_work_left = False  # an engine build still running in native code at exit
        self.notifier = Notifier()
        self.latest = LatestResults()
        self._last_heartbeat: dict[str, Any] | None = None
        self._metrics: Metrics | None = None
        self._control: ControlServer | None = None
        self._view: ViewHub | None = None
        self._sinks: list[MessageSink] = []
        self._view_server: ViewServer | None = None
        self._pinger: WatchdogPinger | None = None

    def request_stop(self) -> None:
        """Ask for a clean shutdown (signal handlers call this; it only sets an event)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask for the config to be read again (SIGHUP; it only sets an event)."""
        self._reload.set()

    def run(self) -> int:
        self._gc.install()
        try:
            return self._run()
        finally:
            self._gc.uninstall()
            if self._froze:  # a process that runs more than one service (the tests) gets its collector back whole
                gc.unfreeze()

    def _run(self) -> int:
        config = self.config
        apply_switch_interval(config.daemon.switch_interval_ms)
        log.info("GIL switch interval %g ms (daemon.switch_interval_ms)", config.daemon.switch_interval_ms)
        if self._stop_requested("before the model loaded"):
            return 0
        self._provider = provider = EngineProvider(config.model, config.engine, leases=self._engine_leases, stop=self._stop)
        self.notifier.status("loading the model")
        try:
            with extending_timeout(self.notifier):  # an engine built before serving may take many minutes
                backend = provider.start()  # a build runs in a child process that a stop ends
        except BuildCancelled:
            if self._stop_requested("while the engine was being built"):
                return 0
            raise
        scheduler: Scheduler | None = None
        try:
            if self._stop_requested("while the model loaded"):
                return 0
            unit = self._build_unit(config, backend)
            model_info = unit.model_info
            self._sinks = _make_sinks(config)
            self._publisher = publisher = Publisher(
                config.publisher, self.instance_id, model_info, self.source_stats, self._heartbeat_body,
                on_published=self._on_published, security=config.security, sinks=self._sinks,
            )
            self._analytics = self._make_analytics(config, unit)
            if config.view.enabled:
                self._view = ViewHub(config.view, regions_by_source(config.zones, config.lines),
                                     counters=lambda: self._analytics.snapshot() if self._analytics else None)
            self._scheduler = scheduler = Scheduler(
                self._mux,
                unit,
                publisher.submit,
                self.source_stats,
                max_batch=config.engine.max_batch,
                max_wait_s=config.engine.max_wait_ms / 1000,
                slots=config.engine.streams_for(provider.target) * 2,  # double buffering per stream of the target engine
                sink_many=publisher.submit_many,
                keep_pixels=config.publisher.thumbnail.enabled,
                analytics=self._analytics,
                sink_events=publisher.submit_events,
                view=self._view,
            )
            scheduler.on_backend_switched = self._backend_switched  # the provider serving then, not this first one
            if config.engine.warmup:
                seconds = scheduler.warm_up()
                log.info("warm-up batch of %d took %.3fs", scheduler.max_batch, seconds)
                if self._stop_requested("during the warm-up batch"):
                    return 0
            self._start_observability()
            publisher.start()
            info = backend.info
            log.info(
                "trtstream %s serving model %s with %s %s on %s, max batch %d, %d source(s), instance %s",
                __version__, model_info["id"], info.name, info.version, info.device, scheduler.max_batch,
                len(config.enabled_sources), self.instance_id,
            )
            if not self._wait_for_subscribers(publisher):
                publisher.stop()  # its final heartbeat tells subscribers this instance is gone
                return 0
            if config.daemon.gc_freeze:  # the model, its graphs and the libraries are loaded: they stay
                freeze_heap("serving")
                self._froze = True
            scheduler.start()
            provider.set_on_ready(functools.partial(self._engine_ready, provider))
            for source in config.enabled_sources:
                self._start_source(source)
            self.started.set()
            self.notifier.ready(
                f"serving {model_info['id']} with {info.name} on {info.device}, {len(config.enabled_sources)} source(s)"
            )
            self._start_watchdog(scheduler, publisher)
            sources_ended = self._serve_until_done()
            self._shutdown(scheduler, publisher)
            return self._sources_outcome() if sources_ended else 0
        finally:
            for part in (self._pinger, self._control, self._metrics, self._view_server, self._view, *self._sinks):
                if part is not None:
                    part.stop()  # each is idempotent: the sinks were stopped after the publisher's last message
            if self._analytics is not None:
                self._analytics.close()  # after the scheduler: its worker processes answered the last batch
            timeout = self.config.daemon.drain_timeout_s
            providers = [*self._retired_providers, self._provider]
            self.native_work_left = not all([provider.close(timeout) for provider in providers])
            (scheduler.backend if scheduler is not None else backend).close()
            self._engine_leases.release_except(None)

    # -- start-up and exit -------------------------------------------------------------------------
    def _stop_requested(self, when: str) -> bool:
        """True (logged, STOPPING=1 sent) when a stop came in during start-up: the caller returns before
        any source starts, rather than finishing a start nobody wants any more."""
        if not self._stop.is_set():
            return False
        log.info("stop requested %s; exiting before any source starts", when)
        self.notifier.stopping("stopped during start-up")
        return True

    def _wait_for_subscribers(self, publisher: Publisher) -> bool:
        """Wait for ``publisher.wait_for_subscribers`` subscriptions; False when a stop request came
        meanwhile (the sources are then never started)."""
        wanted = self.config.publisher.wait_for_subscribers
        timeout = self.config.publisher.wait_for_subscribers_timeout_s
        if wanted > 0:
            log.info("waiting up to %.0fs for %d subscriber(s) before reading the sources", timeout, wanted)
        subscribed = publisher.wait_for_subscribers(wanted, timeout, self._stop)
        if self._stop_requested("while waiting for subscribers"):
            return False
        if not subscribed:
            log.warning("no subscriber after %.0fs; starting anyway", timeout)
        return True

    def _sources_outcome(self) -> int:
        """The exit code once every source has ended on its own: ``EXIT_SOURCES_FAILED`` when each one
        failed for good; 0 when at least one ended normally (the failures are logged: restarting the
        whole daemon would read the finished files again)."""
        failed = sorted(source_id for source_id, reader in self._readers.items() if reader.state is SourceState.FAILED)
        if failed and len(failed) == len(self._readers):
            log.error("every source failed (%s); exit status %d", ", ".join(failed), EXIT_SOURCES_FAILED)
            return EXIT_SOURCES_FAILED
        if failed:
            log.warning("%d of %d sources failed (%s); the others ended normally, exit status 0", len(failed), len(self._readers), ", ".join(failed))
        return 0

    # -- parts -------------------------------------------------------------------------------------
    def _start_observability(self) -> None:
        """Metrics endpoint and control socket (before the publisher binds: a port in use fails early)."""
        config = self.config
        if config.metrics.enabled:
            self._metrics = Metrics(MetricsInputs(
                sources=lambda: self.source_stats,
                pipeline=lambda: self._scheduler.stats if self._scheduler else None,
                publisher=lambda: self._publisher.stats if self._publisher else None,
                backend=lambda: self._scheduler.backend.info.describe() if self._scheduler else None,
                analytics=lambda: self._analytics.snapshot() if self._analytics else None,
                gc=self._gc.snapshot,
            ))
            self._metrics.start(config.metrics.port, config.metrics.address, allow_remote=config.metrics.allow_remote)
        for sink in self._sinks:  # a missing certificate fails here; an absent broker is retried in the background
            sink.start()
        if self._view is not None:
            self._view.start()
            self._view_server = ViewServer(self._view, self._view_sources)
            self._view_server.start()
        if config.control.enabled:
            self._control = ControlServer(
                config.control.endpoint or default_control_endpoint(), lambda: self._last_heartbeat, self.latest,
                mode=config.control.mode, allow_remote=config.control.allow_remote,
            )
            self._control.start()

    def _view_sources(self) -> list[dict[str, Any]]:
        """The view's source list (HTTP threads): every configured source, with the latest heartbeat's
        entry once there is one (state, fps: read, never advanced), so a viewer can open a camera's page
        before its first frame."""
        beat = {entry["id"]: entry for entry in (self._last_heartbeat or {}).get("sources", [])}
        return [beat.get(source.id) or {"id": source.id, "state": "starting", "fps": 0.0, "frames_published": 0}
                for source in self.config.enabled_sources]  # fmt: skip

    def _start_watchdog(self, scheduler: Scheduler, publisher: Publisher) -> None:
        """Feed systemd's watchdog while frames flow (only when the unit sets WatchdogSec=)."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        self._pinger = WatchdogPinger(
            self.notifier,
            WatchdogGate(self.config.watchdog.stall_s),
            lambda: progress_from_stats(self.source_stats, scheduler.stats, publisher.stats),
            interval,
            status=lambda: status_line(self._last_heartbeat) if self._last_heartbeat else None,
        )
        self._pinger.start()

    def _on_published(self, result, header: dict[str, Any]) -> None:
        """Publisher thread, after a result was sent: keep it for late subscribers, time its stages."""
        self.latest.update(result.frame.source_id, header)
        if self._metrics is not None:
            t = header["timestamps"]
            self._metrics.observe_result(result.frame.source_id, t["captured"], t["preprocessed"], t["inferred"], t["published"])

    @staticmethod
    def _make_analytics(config: Config, unit: ServingUnit) -> AnalyticsStage | None:
        """Trackers, zones and lines for the detection pipeline (None for other pipelines), on the
        completer or in ``daemon.analytics_processes`` worker processes."""
        if config.model.pipeline != "detection":
            return None
        settings = AnalyticsSettings.from_config(config, _labels_of(unit))
        processes = config.daemon.analytics_processes
        if processes:
            log.info("analytics (trackers, zones, lines) in %d worker process(es)", processes)
        return make_analytics(settings, processes)

    def _build_unit(self, config: Config, backend) -> ServingUnit:
        """What serves ``config``'s model with ``backend`` (the one factory: start, background build, reload)."""
        nvdec = [s.id for s in config.enabled_sources if resolve_decoder(s, backend.info.takes_device_frames) == "nvdec"]
        return build_unit(config.model, config.engine, backend, nvdec)

    def _start_source(self, source) -> None:
        self.source_stats[source.id] = SourceStats(source.id, mask_url(source.uri), source.resolved_kind.value)
        if self._publisher is not None:
            self._publisher.source_added(source.id)
        queue = self._mux.add_queue(source.id, source.queue_size, source.effective_drop_policy, source.stale_after_frames,
                                    self.source_stats[source.id])
        pinned = self._pinned_frames_for(source)
        copy = self._publisher is None or self._publisher.config.thumbnail.enabled  # frames used after their batch: no pooled memory
        factory = functools.partial(open_producer, pinned_frames=pinned, copy_frames=copy)
        if source.decoder == "auto":
            decoder = resolve_decoder(source, self._scheduler is not None and self._scheduler.backend.info.takes_device_frames)
            log.info("source %s: decoder 'auto' decodes with %s", source.id, "NVDEC" if decoder == "nvdec" else "OpenCV")
            if decoder == "nvdec":
                factory = AutoDecoderFactory(pinned, copy)
            else:
                source = source.model_copy(update={"decoder": "opencv"})
        reader = SourceReader(source, queue, self.source_stats[source.id], producer_factory=factory)
        self._readers[source.id] = reader
        reader.start()

    def _pinned_frames_for(self, source) -> int:
        """How many pinned buffers this source decodes into (0: ordinary memory). Only with GPU
        preprocessing, and not with thumbnails (the publisher encodes them after the frame's buffer went
        back to the pool). Enough for the frames queued plus one per in-flight slot and two being decoded;
        an empty pool makes the reader decode into ordinary memory, it never waits."""
        scheduler, publisher = self._scheduler, self._publisher
        if scheduler is None or not scheduler.backend.info.preprocesses_on_device:
            return 0
        if publisher is None or publisher.config.thumbnail.enabled:  # the running publisher's settings, not a reloaded file's
            return 0
        return source.queue_size + scheduler.slot_count + 2

    def _stop_source(self, source_id: str, reason: str) -> None:
        """Stop a reader; its queued frames still drain, then its end-of-stream says ``reason``."""
        reader = self._readers.pop(source_id)
        reader.queue.close(reason)
        reader.stop()

    def _engine_ready(self, provider: EngineProvider, backend) -> None:
        """A provider's background build finished (on its thread): the engine becomes a unit configured
        like the one at start, for the config that provider was made for, then it is switched to."""
        config = self.config.model_copy(update={"model": provider.model, "engine": provider.engine})
        try:
            unit = self._build_unit(config, backend)
        except Exception as exc:
            log.error("cannot switch to the new engine: %s", exc)
            backend.close()
            return
        self._switch_to(unit)

    def _switch_to(self, unit: ServingUnit) -> None:
        """Warm the new unit's engine up off the hot path, then let the scheduler swap it in between two
        batches (and the publisher's model fields with it)."""
        try:
            seconds = warm_up(unit.backend, self._scheduler.max_batch)
            log.info("new %s engine warmed up in %.3fs", unit.backend.info.name, seconds)
            self._scheduler.replace_unit(unit)
            self._publisher.set_model_info(unit.model_info)
        except Exception as exc:  # an incompatible engine must not take the daemon down
            log.error("cannot switch to the new engine: %s", exc)
            unit.backend.close()

    # -- lifecycle ---------------------------------------------------------------------------------
    def _serve_until_done(self) -> bool:
        """Serve until stopped (False) or, with ``daemon.exit_when_sources_end``, every source ended (True)."""
        announced_idle = False
        serving_since = time.monotonic()
        while not self._stop.wait(0.2):
            provider = self._provider
            if provider.build_pending and (self._scheduler.stats.batches > 0 or time.monotonic() - serving_since > 5.0):
                provider.begin_background_build()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self._mux.all_finished():
                if self.config.daemon.exit_when_sources_end:
                    log.info("every source has ended")
                    return True
                if not announced_idle:
                    log.info("every source has ended; idle until stopped or reloaded (daemon.exit_when_sources_end = false)")
                    announced_idle = True
            else:
                announced_idle = False
        return False

    def reload(self) -> bool:
        """Read the config file again and apply it without a restart: sources are added, removed or
        restarted; a model or engine change is built in the background and swapped in between two
        batches; logging and drain settings apply at once; publisher changes need a restart. An invalid
        config changes nothing: the error is logged and reported in heartbeats."""
        self.notifier.reloading()  # systemd shows "reloading" until READY=1, which follows on every path
        applied = False
        try:
            applied = self._apply_reload()
            return applied
        finally:
            self.notifier.ready("reloaded" if applied else "reload rejected: running the previous config")

    def _apply_reload(self) -> bool:
        from .cli import load_checked

        if self.config_path is None:
            log.warning("reload requested, but this daemon was not started from a config file")
            return False
        try:
            new = load_checked(self.config_path)
            new = self._reload_security(self.config, new)
        except TrtstreamError as exc:  # a UserError, and a backend or publisher failure alike: keep the old config
            message = str(exc).replace("\n", "; ")
            log.error("reload rejected, still running the previous config: %s", message)
            self.reload_status.update(last_error=mask_text(message), failed_at=time.time())
            return False
        old = self.config
        old_sources = {s.id: s for s in old.enabled_sources}
        new_sources = {s.id: s for s in new.enabled_sources}
        for source_id in old_sources.keys() - new_sources.keys():
            log.info("reload: removing source %s", source_id)
            self._stop_source(source_id, "removed")
        for source_id, source in new_sources.items():
            if source_id not in old_sources:
                log.info("reload: adding source %s", source_id)
                self._start_source(source)
            elif source != old_sources[source_id]:
                log.info("reload: restarting source %s with its new settings", source_id)
                self._stop_source(source_id, "reconfigured")
                self._start_source(source)
        if new.model != old.model or new.engine != old.engine:
            log.info("reload: the model or engine settings changed; preparing the new engine in the background")
            threading.Thread(target=self._rebuild_model, args=(new,), name="engine-reload", daemon=True).start()
        if new.publisher != old.publisher:
            log.warning("reload: [publisher] changes take effect at the next restart")
            new = new.model_copy(update={"publisher": old.publisher})
        if new.sinks != old.sinks:
            log.warning("reload: [[sinks]] changes take effect at the next restart")
            new = new.model_copy(update={"sinks": old.sinks})
        if new.view != old.view:
            log.warning("reload: [view] changes take effect at the next restart (its zones and lines are redrawn now)")
            new = new.model_copy(update={"view": old.view})
        if self._view is not None:
            self._view.set_regions(regions_by_source(new.zones, new.lines))
        if new.logging != old.logging:
            logging.getLogger().setLevel(new.logging.level)
        if new.daemon.analytics_processes != old.daemon.analytics_processes:
            log.warning("reload: daemon.analytics_processes takes effect at the next restart")
            new = new.model_copy(update={"daemon": new.daemon.model_copy(update={"analytics_processes": old.daemon.analytics_processes})})
        if new.daemon.switch_interval_ms != old.daemon.switch_interval_ms:
            apply_switch_interval(new.daemon.switch_interval_ms)
            log.info("reload: GIL switch interval %g ms (daemon.switch_interval_ms)", new.daemon.switch_interval_ms)
        if self._analytics is not None and self._scheduler is not None:  # zones, lines, tracking: applied between two batches
            self._analytics.reconfigure(AnalyticsSettings.from_config(new, _labels_of(self._scheduler.unit)))
        self.config = new
        self.reload_status.update(count=self.reload_status["count"] + 1, last_error=None, reloaded_at=time.time())
        log.info("reload done")
        return True

    def _reload_security(self, old: Config, new: Config) -> Config:
        """[security] on reload: the authorised CURVE client keys are re-read and apply from the next
        handshake on (connections already open stay until they reconnect); any other [security] change
        waits for a restart, like [publisher]. UserError (nothing applied) when the keys cannot be read."""
        from .security import reload_authorized_clients

        if new.security != old.security:
            log.warning("reload: [security] changes take effect at the next restart (the authorised client keys are re-read now)")
            new = new.model_copy(update={"security": old.security})
        for directory, count, added, removed in reload_authorized_clients():
            log.info(
                "reload: %d authorised client key(s) in %s (%d added, %d removed; connected clients keep their "
                "connection until they reconnect)", count, directory, added, removed,
            )
        return new

    def _rebuild_model(self, config: Config) -> None:
        try:
            provider = EngineProvider(
                config.model, config.engine.model_copy(update={"on_missing_engine": "wait"}), leases=self._engine_leases, stop=self._stop
            )
            backend = provider.start()
        except Exception as exc:
            log.error("reload: the new model cannot be served, keeping the current one: %s", exc)
            self.reload_status.update(last_error=mask_text(str(exc)))
            return
        try:
            unit = self._build_unit(config, backend)
        except Exception as exc:
            log.error("reload: the new model cannot be served, keeping the current one: %s", exc)
            self.reload_status.update(last_error=mask_text(str(exc)))
            backend.close()
            provider.close(timeout=0)
            return
        self._retire_provider()
        self._provider = provider
        self._switch_to(unit)

    def _retire_provider(self) -> None:
        """The provider of the model being replaced: its background build, if one is still running, is
        cancelled (its engine is discarded, never swapped in over the new model) and waited for at exit."""
        old = self._provider
        if old is not None:
            old.close(timeout=0)
            self._retired_providers.append(old)

    def _backend_switched(self, backend) -> None:
        """Scheduler callback (batcher thread): the switch is done, tell the provider in charge now."""
        provider = self._provider
        if provider is not None:
            provider.mark_switched(backend)
        if self._froze:  # the old engine's objects were frozen: let the collector have them, keep the new one's out
            refreeze("engine switched")

    def _shutdown(self, scheduler: Scheduler, publisher: Publisher) -> None:
        log.info("stopping: draining in-flight frames")
        if self._pinger is not None:
            self._pinger.stop()
        self.notifier.stopping("draining in-flight frames")
        readers = list(self._readers.values())
        for reader in readers:
            reader.stop()
        scheduler.close_when_drained()
        drained = scheduler.join(self.config.daemon.drain_timeout_s)
        if not drained:
            log.warning("drain timeout (%.1fs) reached; abandoning queued frames", self.config.daemon.drain_timeout_s)
            scheduler.abort()
            scheduler.join(5.0)
            for reader in readers:
                if not reader.queue.finished:
                    publisher.submit(EndOfStream(reader.config.id, "shutdown", "drain timeout"))
        deadline = time.monotonic() + READER_STOP_S  # one deadline for all: 50 blocked readers must not add up
        for reader in readers:
            if not reader.join(max(0.0, deadline - time.monotonic())):
                log.warning("source %s: reader did not stop in time (blocked in a read)", reader.config.id)
        if not decoding_hosts.wait_stopped(DECODING_STOP_S):
            log.warning("the decoding processes did not all end within %.0f s of their last camera", DECODING_STOP_S)
        publisher.stop()
        for sink in self._sinks:  # after the publisher: its final messages are in their outboxes
            sink.stop()
        totals = {k: (s.frames_captured, s.frames_published, s.frames_dropped) for k, s in self.source_stats.items()}
        log.info("stopped; per source (captured, published, dropped): %s", totals)

    def _heartbeat_body(self) -> dict[str, Any]:
        body = self._build_heartbeat()
        self._last_heartbeat = body  # for `trtstream status` and STATUS=: built once, by the publisher
        return body

    def _build_heartbeat(self) -> dict[str, Any]:
        scheduler = self._scheduler
        info = scheduler.backend.info if scheduler else None
        # list() copies the values in one step under the GIL; iterating the live dict here (the publisher
        # thread) while a reload adds a source (main thread) raised "dictionary changed size" and ended
        # the publisher thread (issue 11).
        sources = list(self.source_stats.values())
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "version": __version__,
            "backend": info.describe() if info else None,
            "engine": self._provider.status() if self._provider else None,
            "pipeline": scheduler.stats.snapshot() if scheduler else None,
            "sources": [stats.snapshot() for stats in sources],
            "overload": self._overload.reading(sources),
            "gc": self._gc.snapshot(),
            "reload": dict(self.reload_status),
            "analytics": self._analytics.snapshot() if self._analytics is not None else {},
            **({"analytics_workers": workers} if self._analytics is not None and (workers := self._analytics.status()) else {}),
            **({"decoding_processes": decoding} if (decoding := decoding_hosts.status()) else {}),
            **({"sinks": [sink.status() for sink in self._sinks]} if self._sinks else {}),
            **({"view": {"viewers": self._view.viewers(), **self._view.stats.snapshot()}} if self._view is not None else {}),
        }


def _make_sinks(config: Config) -> list[MessageSink]:
    """The ``[[sinks]]`` (paho-mqtt is imported only when one is configured)."""
    if not config.sinks:
        return []
    from .sinks.mqtt import MqttSink

    return [MqttSink(sink, f"sinks[{index}]") for index, sink in enumerate(config.sinks)]


def _labels_of(unit: ServingUnit) -> list[str]:
    """The serving pipeline's class names."""
    return list(unit.pipeline.labels)
