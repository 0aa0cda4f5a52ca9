"""Self-healing start: serve at once, build what is missing in the background, switch without a gap.

``EngineProvider.start()`` returns the backend to serve with now:

* a valid cached engine -> load it (seconds);
* none, policy ``wait`` -> build it first, then serve;
* none, policy ``fail`` -> a one-line error pointing at ``trtstream engine build``;
* none, policy ``fallback`` (the default) -> serve at once with ONNX Runtime on the plain ONNX model,
  build the engine on a background thread and hand it to ``on_ready`` (the scheduler swaps it in
  between two batches; queued frames wait, none is lost).

``status()`` says which backend serves and how far a build is, for heartbeats and logs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ..backends import available_backends, resolve_backend_name
from ..backends.base import InferenceBackend
from ..config import EngineConfig, ModelConfig
from ..errors import BackendError, UserError
from .builders import create_builder
from .cache import CacheMiss, EngineCache, EngineLeases, Obtained, default_cache_dir
from .child import BuildCancelled, in_child_process

__all__ = ["EngineProvider"]

log = logging.getLogger("trtstream.engine")


def plain_onnxruntime(model: ModelConfig, engine: EngineConfig) -> InferenceBackend:
    from ..backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model.path, engine.max_batch, engine.streams_for("onnxruntime"), engine.onnxruntime)
    backend.info.details["artifact"] = None
    return backend


class EngineProvider:
    def __init__(
        self,
        model: ModelConfig,
        engine: EngineConfig,
        on_ready: Callable[[InferenceBackend], None] | None = None,
        leases: EngineLeases | None = None,
        stop: threading.Event | None = None,
    ):
        """``leases``: where the cache leases of the engines it hands out are kept (the daemon passes its
        own, shared by every provider it creates, and releases them when the engines stop serving).
        ``stop``: the daemon's stop; builds run in a child process that ends when it is set or when this
        provider is closed (:mod:`daemon.engine.child`)."""
        self.model = model
        self.engine = engine
        self.leases = leases if leases is not None else EngineLeases()
        self.cache = EngineCache(engine.cache_dir or default_cache_dir())
        self.target = resolve_backend_name(engine.backend)
        self._on_ready = on_ready
        self._state: dict[str, Any] = {"target": self.target, "state": "starting", "progress": 0.0, "message": None}
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._stop = stop
        self._lock = threading.Lock()
        self._ready: InferenceBackend | None = None

    def set_on_ready(self, on_ready: Callable[[InferenceBackend], None]) -> None:
        """Where a background-built engine goes; one finished before this call is delivered now.
        ``on_ready`` is called with the provider's lock held, so it must not block or call back in."""
        with self._lock:
            if self._cancel.is_set():
                return
            self._on_ready = on_ready
            ready, self._ready = self._ready, None
            if ready is not None:
                on_ready(ready)

    def status(self) -> dict[str, Any]:
        return dict(self._state)

    def _progress(self, fraction: float, message: str) -> None:
        self._state.update(progress=round(fraction, 3), message=message)

    def start(self) -> InferenceBackend:
        if not self.engine.use_cache or self.target == "torch":  # onnx2torch converts in seconds: nothing to cache
            from ..backends import create_backend

            self._state.update(state="serving", source="uncached")
            return create_backend(self.model, self.engine)
        builder = in_child_process(create_builder(self.model, self.engine, self.target), self._build_unwanted)
        try:
            obtained = self.cache.load_cached(builder, self.model.path)
            log.info("engine cache hit: %s (loaded in %.2fs)", obtained.entry.artifact, obtained.seconds)
            self.leases.keep(obtained.backend, obtained.lease)
            self._state.update(state="serving", source="cache", artifact=obtained.entry.name, progress=1.0)
            return obtained.backend
        except CacheMiss as miss:
            reason = miss.reason
        log.info("no usable cached %s engine for %s: %s", self.target, self.model.path.name, reason)
        policy = self.engine.on_missing_engine
        if policy == "fallback" and not available_backends()["onnxruntime"]:
            log.warning("no ONNX Runtime to fall back on; building the %s engine before serving", self.target)
            policy = "wait"
        if policy == "fail":
            raise UserError(
                f"engine.on_missing_engine = 'fail' and there is no usable cached {self.target} engine ({reason}); "
                "build it with 'trtstream engine build CONFIG'"
            )
        if policy == "wait":
            return self._build_now(builder).backend
        self._state.update(state="pending", source="fallback", reason=reason)
        self._thread = threading.Thread(target=self._build_in_background, args=(builder,), name="engine-build", daemon=True)
        log.info("serving with ONNX Runtime on the plain model; the %s engine builds once serving has begun", self.target)
        return plain_onnxruntime(self.model, self.engine)

    def _build_unwanted(self) -> bool:
        return self._cancel.is_set() or (self._stop is not None and self._stop.is_set())

    @property
    def build_pending(self) -> bool:
        return self._thread is not None and not self._thread.is_alive() and self._state.get("state") == "pending"

    def begin_background_build(self) -> None:
        """Start the deferred build (the daemon calls this once the fallback has served its first batch,
        so a build that takes the machine for minutes never delays the first results)."""
        if self.build_pending:
            self._state.update(state="building")
            self._thread.start()

    def _build_now(self, builder) -> Obtained:
        self._state.update(state="building", source="build")
        started = time.monotonic()
        obtained = self.cache.obtain(builder, self.model.path, self._progress)
        self.leases.keep(obtained.backend, obtained.lease)
        log.info("engine ready (%s) after %.1fs: %s", obtained.outcome, time.monotonic() - started, obtained.entry.name)
        self._state.update(state="serving", source=obtained.outcome, artifact=obtained.entry.name, progress=1.0)
        return obtained

    def _build_in_background(self, builder) -> None:
        try:
            obtained = self._build_now(builder)
        except BuildCancelled:
            log.info("the background %s engine build was stopped (no longer wanted)", self.target)
            self._state.update(state="cancelled")
            return
        except (BackendError, OSError) as exc:
            log.error("background %s engine build failed; staying on the ONNX Runtime fallback: %s", self.target, exc)
            self._state.update(state="failed", message=str(exc))
            return
        except Exception:
            log.exception("background engine build crashed; staying on the fallback")
            self._state.update(state="failed")
            return
        # Decided and delivered under the lock that close() takes to cancel: a provider closed while its
        # build ran (a reload replaced the model) never hands that engine over, not even one instant later.
        with self._lock:
            if self._cancel.is_set():
                obtained.backend.close()
                self.leases.release(obtained.backend)
                log.info("discarded the %s engine built for a model no longer served", self.target)
                return
            self._state.update(state="switching")
            if self._on_ready is None:
                self._ready = obtained.backend
            else:
                self._on_ready(obtained.backend)  # Scheduler.replace_backend: records and wakes, never blocks

    def mark_switched(self, backend: InferenceBackend) -> None:
        """The scheduler serves with ``backend`` now and has closed the one before: that one's cache
        lease goes (``prune`` may remove it again)."""
        self._state.update(state="serving", source="switched", serving=backend.info.name)
        self.leases.release_except(backend)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop delivering builds, end a build in progress (a child process: ended within a second or
        so; a builder on test doubles builds in-process and is waited for up to ``timeout``). True when
        none is left running."""
        with self._lock:
            self._cancel.set()
            ready, self._ready = self._ready, None
        if ready is not None:  # built, never taken: nobody else will close it
            ready.close()
            self.leases.release(ready)
        if timeout <= 0:
            return self._thread is None or not self._thread.is_alive()
        if self._thread is not None and self._thread.is_alive():
            log.info("waiting up to %.0fs for the engine build in progress", timeout)
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True
