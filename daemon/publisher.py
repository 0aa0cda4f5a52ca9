"""Publishes results, end-of-stream messages and heartbeats on a ZeroMQ PUB socket.

The publisher thread creates and owns the socket (pyzmq sockets are not thread-safe); other threads
hand it work through a bounded queue with a non-blocking put (a whole batch of results per put), so a
stalled publisher costs counted drops, never a stalled pipeline. Every send is non-blocking and the
socket has a small send high-water mark: a slow or dead subscriber loses its own messages (visible to
it as gaps in ``seq``) and never slows the daemon or the other subscribers.

Hostile peers: anyone who can connect to a plain endpoint can send to the publisher, not only receive.
The socket is a plain PUB, which drops whatever is not a subscription as it arrives, unless
``wait_for_subscribers`` is set: only then is it an XPUB, whose subscription notices that wait needs.
libzmq queues every upstream message of an XPUB (notices and junk alike) without bound until it is
read, so the XPUB is read at most ``MAX_NOTICES_PER_LOOP`` per loop (a flood cannot hold up the
sends), and it is meant for trusted endpoints (batch jobs, tests). Either way ``ZMQ_MAXMSGSIZE``
(``MAX_INBOUND_BYTES``) disconnects a peer that sends a message larger than any subscription; and an
``ipc://`` path on which another running daemon listens is refused rather than taken over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np
import zmq

from .analytics.stage import AnalyticsMessage
from .config import PublisherConfig
from .entities import EndOfStream, FrameResult
from .errors import PublisherError, UserError
from .ipcpath import ipc_path, refuse_if_in_use
from .messages import base_header, encode_header, heartbeat_topic, source_topic
from .opsconfig import SecurityConfig
from .security import bind_endpoints
from .sinks import MessageSink
from .stats import PublisherStats, SourceStats
from .threadname import name_this_thread
from .zmq_send import GilHoldingSender, sender_for

__all__ = ["Publisher"]

log = logging.getLogger("trtstream.publisher")

_STOP = object()
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)  # a multipart message is queued whole or not at all
# Subscribers only ever send subscriptions (1 byte + a topic of at most a few hundred bytes): a larger
# inbound message is a confused or hostile peer, and libzmq disconnects it.
MAX_INBOUND_BYTES = 4096
# XPUB notices read per loop iteration (and at most every 20 ms once nobody waits): enough for any
# real subscriber churn, few enough that a flood of them cannot delay the sends.
MAX_NOTICES_PER_LOOP = 256


class _Events:
    """A hand-over of analytics messages (told apart from a list of results in the queue)."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[AnalyticsMessage]):
        self.messages = messages


class Publisher:
    """Owns the PUB (XPUB with ``wait_for_subscribers``) socket on a thread named ``publisher``."""

    def __init__(
        self,
        config: PublisherConfig,
        instance_id: str,
        model_info: dict[str, Any],
        source_stats: dict[str, SourceStats],
        heartbeat: Callable[[], dict[str, Any]],
        context: zmq.Context | None = None,
        on_published: Callable[[FrameResult, dict[str, Any]], None] | None = None,
        security: SecurityConfig | None = None,
        sinks: list[MessageSink] | None = None,
    ):
        self.config = config
        self.instance_id = instance_id
        self.stats = PublisherStats()
        self._model_info = model_info
        self._source_stats = source_stats
        self._heartbeat = heartbeat
        self._context = context or zmq.Context.instance()
        self._on_published = on_published  # publisher thread, after each result was sent
        self._security = security
        self._sinks = list(sinks or [])  # each gets every message this thread publishes (daemon/sinks)
        self._result_sinks = [sink for sink in self._sinks if sink.wants_results]
        self._authenticator = None
        # SimpleQueue (C, lock-free put) of single items or whole batches. The results in it are
        # ``_queued - _taken``, so ``queue_size`` still bounds results, not batches. Each counter has one
        # writer side and no lock is shared with the publisher thread: with a hundred reader threads under
        # one GIL, a publisher switched out while holding such a lock would stall the completer behind it.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0  # submitters only, under _submit_lock
        self._taken = 0  # the publisher thread only
        self._submit_lock = threading.Lock()  # submitters among themselves (the completer; ends from others)
        # A submitter waiting for room (queue full) is woken through _room; the publisher thread takes that
        # lock only while someone waits (the flag is a plain attribute it reads without a lock).
        self._sender: GilHoldingSender | None = None  # the publisher thread's, once its socket exists
        self._room = threading.Condition(threading.Lock())
        self._waiting_for_room = False
        self._next_subscription_check = 0.0
        self._model_cache: dict[str, Any] = {}
        self._model_cache_key: tuple | None = None
        self._seq: dict[str, int] = {}
        self._topics: dict[str, bytes] = {}
        self._event_seq: dict[str, int] = {}
        self._event_topics: dict[str, bytes] = {}
        self._result_base = base_header("result", instance_id)  # the fields every result starts with
        self._ended: set[str] = set()
        self._started = threading.Event()
        self._subscriptions = 0
        self._subscribers_wanted = 0
        self._subscribed = threading.Event()
        self._start_error: Exception | None = None
        # XPUB (subscription notices) only when a start-up wait needs them; see the module doc
        self._notices = config.wait_for_subscribers > 0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    # -- called from other threads -----------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Bind every endpoint; raises PublisherError naming the endpoint that failed."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise PublisherError("publisher did not start within %.0fs" % timeout)
        if self._start_error is not None:
            raise self._start_error

    def wait_for_subscribers(self, count: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until ``count`` subscriptions have arrived (so a subscriber started first misses nothing),
        ``timeout`` passed or ``stop`` was set; True only in the first case. ``stop`` is looked at every
        50 ms (a wait cannot be on two events at once): a SIGTERM must not wait out the timeout.

        Only a publisher configured with ``wait_for_subscribers > 0`` sees subscriptions (an XPUB); a
        plain PUB cannot, and returns False at once."""
        if count <= 0:
            return True
        if not self._notices:
            log.warning("wait_for_subscribers(%d): publisher.wait_for_subscribers is 0, so subscriptions are not seen; not waiting", count)
            return False
        self._subscribers_wanted = count
        if self._subscriptions >= count:
            return True
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self._subscribed.wait(min(remaining, 0.05)):
                return True
            if stop is not None and stop.is_set():
                return False
        return self._subscribed.is_set()

    def source_added(self, source_id: str) -> None:
        """A source (re)starts: it counts as not ended again for ``sources_remaining``."""
        self._ended.discard(source_id)

    def set_model_info(self, model_info: dict[str, Any]) -> None:
        """After a model reload: the model fields of the results that follow."""
        self._model_info = model_info

    def submit(self, item: FrameResult | EndOfStream) -> None:
        """Queue a result (as :meth:`submit_many`) or an end-of-stream (never waits, never dropped)."""
        if isinstance(item, EndOfStream):
            self._queue.put(item)  # ends are rare and must arrive
        else:
            self.submit_many([item])

    def submit_many(self, results: list[FrameResult]) -> None:
        """Queue a batch of results with one queue operation. Over ``queue_size`` waiting results it waits
        up to ``queue_full_wait_s`` for room, and only then drops the batch's excess (counted). Waiting
        is how overload is shed at the door: the completer holds its slot, the batcher stops taking
        frames, and live sources drop their oldest frames (counted per camera) instead of this queue
        throwing away results the GPU has already computed."""
        if not results:
            return
        deadline = None
        need = min(len(results), self.config.queue_size)  # a hand-over larger than the whole queue waits for an empty one
        with self._submit_lock:
            while True:
                room = self.config.queue_size - (self._queued - self._taken)  # _taken only grows: room is never overstated
                if room >= need or not self._thread.is_alive() or self.config.queue_full_wait_s == 0:
                    break
                now = time.monotonic()
                deadline = deadline or now + self.config.queue_full_wait_s
                if now >= deadline:
                    break
                self._waiting_for_room = True
                with self._room:  # short waits: a notify between the check and the wait is only a little late
                    self._room.wait(min(0.02, deadline - now))
            self._waiting_for_room = False
            taken = results if len(results) <= room else results[: max(room, 0)]
            self._queued += len(taken)
        if deadline is not None:
            self.stats.queue_full_waits += 1
        if len(taken) < len(results):
            self.stats.dropped_queue_full += len(results) - len(taken)
        if taken:
            self._queue.put(taken)

    def submit_events(self, messages: list[AnalyticsMessage]) -> None:
        """Queue event and track messages; never blocks. Like ends, they are rare and must arrive: a
        counting consumer cannot recover a lost crossing, so they are not dropped at the queue."""
        if messages:
            self._queue.put(_Events(messages))

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is queued and a final heartbeat, then close the socket with the configured linger."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- publisher thread --------------------------------------------------------------------------
    def _run(self) -> None:
        name_this_thread()
        try:
            self._refuse_ipc_in_use()
        except PublisherError as exc:
            self._start_error = exc
            self._started.set()
            return
        # XPUB sends exactly like PUB and also tells us about subscriptions (see wait_for_subscribers),
        # but keeps whatever peers send until it is read: only when that wait is configured.
        socket = self._context.socket(zmq.XPUB if self._notices else zmq.PUB)
        if self._notices:
            socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, duplicates included
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        socket.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        socket.setsockopt(zmq.LINGER, self.config.linger_ms)
        self._sender = sender_for(socket) if self.config.hold_gil_for_sends else None
        security = self._security or SecurityConfig()
        curve = security.curve
        try:  # ipc plain with its file mode, then tcp under CURVE when enabled
            self._authenticator = bind_endpoints(
                socket,
                self.config.endpoints,
                ipc_mode=security.ipc_mode,
                curve=(curve.server_secret_key, curve.authorized_clients, curve.allow_any_client) if curve.enabled else None,
            )
        except (PublisherError, UserError) as exc:  # PublisherError naming the endpoint, or a CURVE key problem (UserError)
            self._start_error = exc
            socket.close(linger=0)
            self._started.set()
            return
        log.info("publishing on %s (topic prefix %r)", ", ".join(self.config.endpoints), self.config.topic_prefix)
        self._started.set()
        try:
            self._serve(socket)
        except Exception:
            log.exception("publisher crashed")
        finally:
            socket.close()
            if self._authenticator is not None:
                self._authenticator.stop()

    def _refuse_ipc_in_use(self) -> None:
        """libzmq would silently take over an ipc path another daemon still serves; refuse instead (a
        stale socket file, nobody listening, is replaced by the bind as before)."""
        for endpoint in self.config.endpoints:
            path = ipc_path(endpoint)
            if path is not None:
                refuse_if_in_use(path, "publisher.endpoints", shown=endpoint, error=PublisherError)

    def _serve(self, socket: zmq.Socket) -> None:
        interval = self.config.heartbeat_interval_s
        next_heartbeat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_heartbeat:
                self._send_heartbeat(socket, final=False)
                next_heartbeat = now + interval
            if self._notices:
                self._read_subscriptions(socket)
            timeout = max(0.0, next_heartbeat - time.monotonic())
            if self._subscribers_wanted and not self._subscribed.is_set():
                timeout = min(timeout, 0.02)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            if item is _STOP:
                break
            if isinstance(item, EndOfStream):
                parts = self._end_message(item)
                self._send(socket, parts)
                self._to_sinks(self._sinks, "eos", item.source_id, parts[1])
                continue
            if isinstance(item, _Events):
                for message in item.messages:
                    parts = self._analytics_message(message)
                    self._send(socket, parts)
                    self._to_sinks(self._sinks, message.kind, message.source_id, parts[1], parts[2] if len(parts) > 2 else None)
                continue
            self._taken += len(item)
            self.stats.queue_depth = self._queued - self._taken
            if self._waiting_for_room:
                with self._room:
                    self._room.notify_all()
            result_sinks = self._result_sinks
            for result in item:
                parts, header = self._result_message(result)
                if result_sinks:
                    self._to_sinks(result_sinks, "result", result.frame.source_id, parts[1])
                if self._send(socket, parts, result.frame.source_id) and self._on_published is not None:
                    try:
                        self._on_published(result, header)
                    except Exception:  # an observer must never stop publishing
                        log.exception("on_published failed")
        self._send_heartbeat(socket, final=True)

    def _send_heartbeat(self, socket: zmq.Socket, final: bool) -> None:
        payload = encode_header(self._heartbeat_header(final))
        self._send(socket, [heartbeat_topic(self.config.topic_prefix), payload])
        self._to_sinks(self._sinks, "heartbeat", None, payload)

    @staticmethod
    def _to_sinks(sinks: list[MessageSink], kind: str, source_id: str | None, payload: bytes, attachment: bytes | None = None) -> None:
        """The message's JSON (as sent on ZeroMQ) to each sink, with its snapshot JPEG if it has one; a
        failing sink never stops publishing."""
        for sink in sinks:
            try:
                sink.offer(kind, source_id, payload, attachment)
            except Exception:
                log.exception("sink %s failed to take a %s message", sink.name, kind)

    def _read_subscriptions(self, socket: zmq.Socket) -> None:
        """Read up to ``MAX_NOTICES_PER_LOOP`` of XPUB's subscription notices (first byte 1 = subscribe,
        0 = unsubscribe). Called once per loop, but looks at most every 20 ms while nobody waits for a
        subscriber: notices only feed ``wait_for_subscribers``, and asking ZMQ_EVENTS per message cost
        more than the send itself. Never drains until empty: a peer sending without pause would hold
        the publisher here while the results wait."""
        now = time.monotonic()
        waiting = self._subscribers_wanted and not self._subscribed.is_set()
        if now < self._next_subscription_check and not waiting:
            return
        self._next_subscription_check = now + 0.02
        for _ in range(MAX_NOTICES_PER_LOOP):
            if not socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                notice = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if notice[:1] == b"\x01":
                self._subscriptions += 1
                if self._subscribers_wanted and self._subscriptions >= self._subscribers_wanted:
                    self._subscribed.set()

    def _send(self, socket: zmq.Socket, parts: list[bytes], source_id: str | None = None) -> bool:
        sender = self._sender
        try:
            if len(parts) == 2 and sender is not None and type(parts[0]) is bytes and type(parts[1]) is bytes:
                if not sender.send(parts[0], _NOBLOCK_MORE):  # keeps the GIL (daemon/zmq_send.py says why)
                    raise zmq.Again()
                sender.send(parts[1], _NOBLOCK)  # the first part was taken: so is the rest (multipart is atomic)
            elif len(parts) == 2:  # the common case, without send_multipart's per-part flag arithmetic
                socket.send(parts[0], _NOBLOCK_MORE)
                socket.send(parts[1], _NOBLOCK)
            else:
                socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts) < 3)
        except zmq.Again:
            self.stats.dropped_socket += 1
            return False
        self.stats.sent += 1
        if source_id is not None and source_id in self._source_stats:
            self._source_stats[source_id].frames_published += 1
        return True

    def _model_fields(self, backend: str, artifact: str | None) -> dict[str, Any]:
        """The ``model`` object of a result, built once per (model, backend, engine) rather than per frame."""
        key = (id(self._model_info), backend, artifact)
        if self._model_cache_key != key:
            self._model_cache = {**self._model_info, "backend": backend, "artifact": artifact}
            self._model_cache_key = key
        return self._model_cache

    def _next_seq(self, source_id: str) -> int:
        seq = self._seq.get(source_id, 0)
        self._seq[source_id] = seq + 1
        return seq

    def _result_message(self, result: FrameResult) -> tuple[list[bytes], dict[str, Any]]:
        """Header dictionary and wire parts of one result (built as one literal: this runs per frame)."""
        frame = result.frame
        source_id = frame.source_id
        image = frame.image
        topic = self._topics.get(source_id)
        if topic is None:
            topic = self._topics[source_id] = source_topic(self.config.topic_prefix, source_id)
        header = {
            **self._result_base,
            "source_id": source_id,
            "seq": self._next_seq(source_id),
            "frame": {"index": frame.index, "pts_ms": frame.pts_ms, "width": image.shape[1], "height": image.shape[0]},
            "model": self._model_fields(result.backend, result.artifact),
            "batch_size": result.batch_size,
            "inferred": result.inferred,
            **result.results,
        }  # fmt: skip
        parts = [topic, b""]
        payloads = []
        thumbnail = self.config.thumbnail
        if thumbnail.enabled and isinstance(image, np.ndarray):  # host pixels (not NVDEC frames, not dropped ones)
            if image.shape[1] > thumbnail.max_width:
                height = max(1, round(image.shape[0] * thumbnail.max_width / image.shape[1]))
                image = cv2.resize(image, (thumbnail.max_width, height), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, thumbnail.jpeg_quality])
            if ok:
                payloads.append({"kind": "thumbnail", "content_type": "image/jpeg", "width": image.shape[1], "height": image.shape[0]})
                parts.append(jpeg.tobytes())
        header["payloads"] = payloads
        header["timestamps"] = {
            "captured": frame.t_captured,
            "preprocessed": result.t_preprocessed,
            "inferred": result.t_inferred,
            "published": time.time(),
        }
        stats = self._source_stats.get(source_id)
        if stats is not None:
            stats.latency.add(time.monotonic() - frame.mono_captured)
        parts[1] = encode_header(header)
        return parts, header

    def _end_message(self, end: EndOfStream) -> list[bytes]:
        self._ended.add(end.source_id)
        header = base_header("eos", self.instance_id)
        stats = self._source_stats.get(end.source_id)
        header.update(
            source_id=end.source_id,
            seq=self._next_seq(end.source_id),
            reason=end.reason,
            detail=end.detail,
            frames_captured=stats.frames_captured if stats else 0,
            frames_dropped=stats.frames_dropped if stats else 0,
            frames_published=(stats.frames_published if stats else 0),
            sources_remaining=len(set(self._source_stats) - self._ended),
            timestamps={"published": time.time()},
        )
        return [source_topic(self.config.topic_prefix, end.source_id), encode_header(header)]

    def _analytics_message(self, message: AnalyticsMessage) -> list[bytes]:
        """An ``event`` or ``track`` message on ``<events prefix>/<source_id>/``, numbered by its own
        per-source sequence (a subscriber of events alone sees no gaps from results it did not take);
        with ``[snapshots]``, the object's best picture as a JPEG part after the header."""
        source_id = message.source_id
        topic = self._event_topics.get(source_id)
        if topic is None:
            topic = self._event_topics[source_id] = source_topic(self.config.events_prefix, source_id)
        seq = self._event_seq.get(source_id, 0)
        self._event_seq[source_id] = seq + 1
        header = base_header(message.kind, self.instance_id)
        header.update(source_id=source_id, seq=seq, **message.body)
        header["timestamps"] = {"captured": message.t_captured, "published": time.time()}
        snapshot = message.attachment
        if snapshot is None:
            return [topic, encode_header(header)]
        header["payloads"] = [{"kind": "snapshot", "content_type": "image/jpeg", "width": snapshot.width, "height": snapshot.height,
                               "frame_index": snapshot.frame_index, "score": snapshot.score}]  # fmt: skip
        return [topic, encode_header(header), snapshot.jpeg]

    def _heartbeat_header(self, final: bool) -> dict[str, Any]:
        header = base_header("heartbeat", self.instance_id)
        header.update(self._heartbeat())
        header["final"] = final
        header["publisher"] = self.stats.snapshot()
        header["timestamps"] = {"published": time.time()}
        return header
