"""Python's cyclic garbage collector in a daemon that holds a model: freeze what start-up made, and count
what each collection costs.

Why: a full (generation 2) collection walks every object the collector tracks. A serving daemon holds
hundreds of thousands that never become garbage: its libraries, the converted model and, with
``engine.torch.compile``, TorchInductor's graphs. Measured on the 2-core development machine, a full
collection took 20 ms with only the daemon's imports loaded (75 k objects) and 59 ms with torch imported
(165 k); every thread waits for it, since it runs under the GIL. Meanwhile the daemon allocates a dict per
detection and an object per frame, so the survivors that trigger full collections keep coming, and each
one is a pause of every camera at once: frames then go stale at the door together. ``gc.freeze()`` moves
every object alive at that moment into the permanent generation, which collections skip (the technique
Instagram described for its servers, and the reason CPython has the call): after it, a full collection
walks only what was made since.

What is frozen is never collected by the cyclic collector (reference counting still frees it), so the
heap is frozen again after an engine switch: unfrozen, one full collection for the old engine's cycles,
frozen again (:func:`refreeze`) — one pause per switch instead of one every few seconds.

:class:`GcPauses` times every collection through ``gc.callbacks`` (heartbeats, ``trtstream status``,
Prometheus): collections, total and longest pause per generation.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field

__all__ = ["GcPauses", "freeze_heap", "refreeze"]

log = logging.getLogger("trtstream.gc")


def freeze_heap(why: str) -> int:
    """One full collection (so start-up's garbage is not frozen with the rest), then ``gc.freeze()``.
    Returns how many objects are frozen now."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%s: %d objects frozen out of garbage collection (gc.freeze, daemon.gc_freeze; %.0f ms)", why, frozen,
             (time.perf_counter() - started) * 1000)
    return frozen


def refreeze(why: str) -> int:
    """After an engine switch: what was frozen goes back to the collector, one full collection frees the
    old engine's reference cycles, and what is alive now is frozen again."""
    gc.unfreeze()
    return freeze_heap(why)


@dataclass
class _Generation:
    collections: int = 0
    seconds: float = 0.0
    longest_s: float = 0.0


@dataclass
class GcPauses:
    """Every collection's duration, per generation, from ``gc.callbacks``. The callback runs on whichever
    thread triggered the collection, under the GIL, and is the only writer; readers take a snapshot."""

    generations: list[_Generation] = field(default_factory=lambda: [_Generation() for _ in range(3)])
    _started: float | None = None

    def install(self) -> "GcPauses":
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        return self

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        seconds = time.perf_counter() - self._started
        self._started = None
        generation = self.generations[min(int(info.get("generation", 2)), 2)]
        generation.collections += 1
        generation.seconds += seconds
        if seconds > generation.longest_s:
            generation.longest_s = seconds

    def snapshot(self) -> dict:
        """The heartbeat's ``gc``: per generation 0, 1, 2 the collections, their total and longest pause,
        and how many objects are frozen."""
        return {
            "collections": [g.collections for g in self.generations],
            "pause_s": [round(g.seconds, 4) for g in self.generations],
            "longest_pause_ms": [round(g.longest_s * 1000, 2) for g in self.generations],
            "frozen": gc.get_freeze_count(),
        }
