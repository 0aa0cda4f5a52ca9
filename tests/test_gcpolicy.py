"""daemon.gcpolicy with the real collector: what gc.freeze keeps out of collections, that a switch's
refreeze lets the collector free what was frozen, and that every collection is counted."""

from __future__ import annotations

import gc
import weakref

import pytest

from daemon.gcpolicy import GcPauses, freeze_heap, refreeze


class _Node:
    """Something in a reference cycle, as a model's modules are: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen_after():
    yield
    gc.unfreeze()  # this process's collector whole again for the other tests


def test_freezing_keeps_what_is_alive_out_of_collections(unfrozen_after):
    kept = [_Node() for _ in range(100)]
    assert any(node is kept[0] for node in gc.get_objects())
    frozen = freeze_heap("test")
    assert frozen == gc.get_freeze_count() >= 100
    assert not any(node is kept[0] for node in gc.get_objects()), "a frozen object is not walked by collections"


def test_refreezing_lets_the_collector_free_an_old_engine_frozen_with_the_rest(unfrozen_after):
    """The old engine was alive at the freeze; after the switch it is garbage in a cycle. Frozen, no
    collection frees it (a leak per reload); refreeze does, and freezes what is alive now."""
    old_engine = _Node()
    gone = weakref.ref(old_engine)
    freeze_heap("test")
    del old_engine
    gc.collect()
    assert gone() is not None, "frozen: the collector never looks at it"
    refreeze("test switch")
    assert gone() is None, "refreeze collects the old engine's cycle"
    assert gc.get_freeze_count() > 0


def test_every_collection_is_counted_per_generation_with_its_pause():
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.uninstall()
    snapshot = pauses.snapshot()
    assert snapshot["collections"][0] >= 1 and snapshot["collections"][2] >= 2, snapshot
    assert snapshot["pause_s"][2] > 0 and 0 < snapshot["longest_pause_ms"][2] <= snapshot["pause_s"][2] * 1000, snapshot
    counted = list(snapshot["collections"])
    gc.collect(2)
    assert pauses.snapshot()["collections"] == counted, "uninstalled: no longer counting"
