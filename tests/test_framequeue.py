"""Per-source queues and the cross-source multiplexer (real threads, no sleeps)."""

from __future__ import annotations

import threading
import time

import numpy as np

from daemon.config import DropPolicy
from daemon.entities import Frame
from daemon.framequeue import Multiplexer
from daemon.stats import SourceStats

IMAGE = np.zeros((2, 2, 3), np.uint8)


def frame(source: str, index: int) -> Frame:
    return Frame(source, index, None, IMAGE, time.time(), time.monotonic())


def test_drop_oldest_keeps_the_newest_frames_and_counts_drops():
    mux = Multiplexer()
    queue = mux.add_queue("cam", 3, DropPolicy.DROP_OLDEST)
    for i in range(10):
        assert queue.put(frame("cam", i))
    assert queue.dropped == 7
    batch = mux.next_batch(8, 0, threading.Event())
    assert [f.index for f in batch.frames] == [7, 8, 9]


def aged(source: str, index: int, seconds_ago: float) -> Frame:
    return Frame(source, index, None, IMAGE, time.time() - seconds_ago, time.monotonic() - seconds_ago)


def test_stale_frames_ahead_of_a_newer_one_are_dropped_at_the_batchers_turn():
    """A 30 fps camera's queue, stale after 2 intervals (67 ms), four frames queued for a batch of two: frames
    captured 200 and 100 ms ago go (and count as dropped) because newer ones are queued; 40 ms and 0 ms are
    inferred, in order. The newest is kept however old it is: the camera's last frame is the freshest there is."""
    mux = Multiplexer()
    stats = SourceStats("cam", "rtsp://camera/stream", "stream")
    queue = mux.add_queue("cam", 4, DropPolicy.DROP_OLDEST, stale_after_frames=2, stats=stats)
    queue.set_frame_interval(1 / 30)
    for index, ago in enumerate((0.2, 0.1, 0.04, 0.0)):
        assert queue.put(aged("cam", index, ago))
    batch = mux.next_batch(2, 0, threading.Event())
    assert [f.index for f in batch.frames] == [2, 3]
    assert queue.dropped == 2
    assert stats.frames_dropped == 2, "the source's counters see drops at the batcher's turn (its end of stream adds up)"
    assert stats.frames_stale == 2, "and say why: stale, not a full queue"
    for index, ago in ((4, 5.0), (5, 4.0), (6, 3.0)):
        assert queue.put(aged("cam", index, ago))
    assert [f.index for f in mux.next_batch(2, 0, threading.Event()).frames] == [6]
    for index in range(7, 12):  # five fresh frames into a queue of four: one pushed out, not stale
        assert queue.put(aged("cam", index, 0.0))
    assert (stats.frames_dropped, stats.frames_stale) == (5, 4), (stats.frames_dropped, stats.frames_stale)


def test_a_daemon_behind_by_less_than_a_batch_infers_every_queued_frame():
    """The same old frames with room for all of them in the batch: nothing is dropped (shedding them would
    only lose frames this batch can take)."""
    mux = Multiplexer()
    queue = mux.add_queue("cam", 4, DropPolicy.DROP_OLDEST, stale_after_frames=2)
    queue.set_frame_interval(1 / 30)
    for index, ago in enumerate((0.2, 0.1, 0.04, 0.0)):
        assert queue.put(aged("cam", index, ago))
    assert [f.index for f in mux.next_batch(4, 0, threading.Event()).frames] == [0, 1, 2, 3]
    assert queue.dropped == 0


def test_nothing_is_stale_when_told_so_for_a_file_or_before_the_rate_is_known():
    """``stale_after_frames = 0``, a blocking (file) queue, and a queue whose reader has not said its frame
    rate: every frame, in order."""
    mux = Multiplexer()
    off = mux.add_queue("off", 4, DropPolicy.DROP_OLDEST, stale_after_frames=0)
    blocking = mux.add_queue("file", 4, DropPolicy.BLOCK, stale_after_frames=2)
    unknown = mux.add_queue("unknown", 4, DropPolicy.DROP_OLDEST, stale_after_frames=2)
    for queue in (off, blocking):
        queue.set_frame_interval(1 / 30)
    for queue in (off, blocking, unknown):
        for index, ago in enumerate((0.3, 0.2, 0.0)):
            assert queue.put(aged(queue.source_id, index, ago))
    frames = []
    for _ in range(3):  # batches of 3 with 9 frames queued: behind, so stale frames would be shed
        frames += mux.next_batch(3, 0, threading.Event()).frames
    for queue in (off, blocking, unknown):
        assert [f.index for f in frames if f.source_id == queue.source_id] == [0, 1, 2]
        assert queue.dropped == 0


def test_block_policy_loses_nothing_and_waits_for_room():
    mux = Multiplexer()
    queue = mux.add_queue("file", 2, DropPolicy.BLOCK)
    produced = threading.Event()

    def producer():
        for i in range(20):
            queue.put(frame("file", i))
        queue.close("end_of_file")
        produced.set()

    thread = threading.Thread(target=producer)
    thread.start()
    got, ends = [], []
    stop = threading.Event()
    while not ends:
        batch = mux.next_batch(3, 0.01, stop)
        got += [f.index for f in batch.frames]
        ends += batch.ends
    thread.join(5)
    assert produced.is_set()
    assert got == list(range(20))
    assert queue.dropped == 0
    assert [e.reason for e in ends] == ["end_of_file"]
    assert mux.all_finished()


def test_round_robin_is_fair_and_keeps_per_source_order():
    mux = Multiplexer()
    fast = mux.add_queue("fast", 100, DropPolicy.BLOCK)
    slow = mux.add_queue("slow", 100, DropPolicy.BLOCK)
    for i in range(10):
        fast.put(frame("fast", i))
    for i in range(2):
        slow.put(frame("slow", i))
    batch = mux.next_batch(4, 0, threading.Event())
    assert sorted((f.source_id, f.index) for f in batch.frames) == [("fast", 0), ("fast", 1), ("slow", 0), ("slow", 1)]
    rest = mux.next_batch(100, 0, threading.Event())
    assert [f.index for f in rest.frames] == list(range(2, 10))


def test_with_more_sources_than_a_batch_holds_each_batch_goes_on_where_the_last_stopped():
    """Overload: every queue full, 10 sources, batches of 4. Each source is served once per turn of the
    sources, in turn, not a window of 4 sliding by one source per batch (which served sources 1-3 again
    in the second batch while 4-9 waited)."""
    mux = Multiplexer()
    queues = [mux.add_queue(f"cam{i}", 4, DropPolicy.DROP_OLDEST) for i in range(10)]
    for i, queue in enumerate(queues):
        for n in range(4):
            queue.put(frame(f"cam{i}", n))
    batches = [[f.source_id for f in mux.next_batch(4, 0, threading.Event()).frames] for _ in range(5)]
    assert batches == [["cam0", "cam1", "cam2", "cam3"], ["cam4", "cam5", "cam6", "cam7"], ["cam8", "cam9", "cam0", "cam1"],
                       ["cam2", "cam3", "cam4", "cam5"], ["cam6", "cam7", "cam8", "cam9"]]


def test_end_of_stream_comes_after_the_sources_last_frame():
    mux = Multiplexer()
    queue = mux.add_queue("a", 10, DropPolicy.BLOCK)
    for i in range(5):
        queue.put(frame("a", i))
    queue.close("end_of_file")
    first = mux.next_batch(3, 0, threading.Event())
    assert [f.index for f in first.frames] == [0, 1, 2] and first.ends == []
    second = mux.next_batch(3, 0, threading.Event())
    assert [f.index for f in second.frames] == [3, 4]
    assert [e.source_id for e in second.ends] == ["a"]
    assert not queue.put(frame("a", 99)), "a closed queue takes no frames"


def test_partial_batch_is_released_after_max_wait():
    mux = Multiplexer()
    queue = mux.add_queue("a", 10, DropPolicy.BLOCK)
    queue.put(frame("a", 0))
    started = time.monotonic()
    batch = mux.next_batch(8, 0.05, threading.Event())
    assert len(batch.frames) == 1
    assert time.monotonic() - started >= 0.05


def test_a_frame_arriving_during_max_wait_joins_the_batch():
    mux = Multiplexer()
    queue = mux.add_queue("a", 10, DropPolicy.BLOCK)
    queue.put(frame("a", 0))
    threading.Timer(0.02, lambda: queue.put(frame("a", 1))).start()
    batch = mux.next_batch(2, 5.0, threading.Event())
    assert [f.index for f in batch.frames] == [0, 1]
