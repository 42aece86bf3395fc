"""Clients held by another process: a long-poll, an upstream message or a
goodbye that lands on a process that does not hold its client is served by
the holder, through Redis (``backplane/forwarding.py``), so that the HTTP
transports need no sticky sessions.

The process that got the request (the requester) checks it as its own:
the origin, the resume key against the one the client is bound to, the
app's ``before_connect`` hooks. It then sends the request to the holder,
which serves it exactly as a request of its own (the poll waits on the
client's mailbox, the message runs through ``receive``), and sends the
answer back in parts: the requester writes them as they come. The client's
``Connected``, ``Disconnected``, grace period and mailbox stay with the
holder: a poll that lands elsewhere is one more request of the same client.
"""
from __future__ import annotations

import logging
import itertools
from collections import OrderedDict
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from gevent.threadpool import ThreadPool

from .backplane.forwarding import Forwarding, Holder, binding_hash
from .protocol import parse_params
from .connection import Carrier, Connection
from .handover import checkpoint_all
from .protocol import handshake_due, heartbeat_text
from .transports import sse, streaming
from .transports.longpolling import Poll
from .transports.sockets import timed_writer, watch_eof
from .transports.streaming import pump
from .transports.websocket import READ_SIZE
from .transports.wsframes import (Close, FrameRefused, InboundFrames, Ping, close_frame,
                                  echo_close_code, encode_frame, pong_frame, sendable_close_code)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .extension import Atmosphere

__all__ = ["Remote"]

log = logging.getLogger("flask_atmosphere")

#: Threads that wait for lookups in Redis (each with a client of its own).
LOOKUP_THREADS = 4

#: What the holder answers when it does not hold the client (any more).
GONE = "gone"

#: Clients whose holder is kept here once looked up (the least recently used go first).
KNOWN_HOLDERS = 65_536
#: Seconds that whether a process is alive, once looked up, is taken as known.
LIVENESS_KNOWN_FOR = 0.25
#: Seconds a request sent to a holder waits for its first answer before it
#: asks whether the holder is alive (it may have died just before).
FIRST_LOOK = 0.5


class HolderSilent(Exception):
    """The holding process did not answer in time."""


class Remote:
    """This process's side of forwarding: it sends requests for clients
    held elsewhere and serves those sent to it.

    Args:
        atmosphere: the extension.
        forwarding: the directory and channel (started by :meth:`start`).
    """

    def __init__(self, atmosphere: "Atmosphere", forwarding: Forwarding):
        self.atmosphere = atmosphere
        self.forwarding = forwarding
        self._pending: dict[str, Queue[dict[str, Any]]] = {}
        self._pool: ThreadPool | None = None  # made on the hub, on first use
        #: ``handover.checkpoint_all``, while it runs.
        self._checkpoints: "gevent.Greenlet[..., None] | None" = None
        #: The polls and streams served here for other processes, by
        #: (requester, request id).
        self._serving: dict[tuple[str, str], tuple[Any, Carrier]] = {}
        self._rids = itertools.count()  # request ids: this process's replies stream is its own
        #: Who holds a client, as a lookup found it (see :meth:`holder`).
        self._holders: OrderedDict[str, Holder] = OrderedDict()
        #: node -> (alive, when it was looked up: ``monotonic()``)
        self._liveness: dict[str, tuple[bool, float]] = {}
        #: node -> the answer of the lookup of its liveness under way
        self._asking: dict[str, AsyncResult[bool | None]] = {}

    def start(self) -> None:
        """Start the forwarding threads; requests and replies are handled on the hub."""
        self.forwarding.start(self._hand, self._on_request, self._on_reply, self._on_refresh,
                              self.atmosphere.broadcaster.defer, self._on_lost)

    def stop(self) -> None:
        self.forwarding.stop()

    def _hand(self, fn: Callable[..., None], *args: Any) -> None:
        """The forwarding threads' news, handed to the hub. Before this
        process serves (``init_app`` starts the threads) or after it stopped,
        no hub takes them: a refresh's checkpoints wait for the next refresh,
        a reply has nobody waiting for it, and a request is answered that
        its client is not held here (none is, or it was handed over)."""
        if self.atmosphere.broadcaster.hand(fn, *args) or fn != self._on_request:
            return
        for message in args[0]:
            rid, requester = message.get("rid"), message.get("from")
            if isinstance(rid, str) and isinstance(requester, str) \
                    and message.get("kind") != "cancel":
                self.forwarding.send(requester, {"rid": rid, GONE: True}, reply=True)

    def _on_lost(self, count: int) -> None:
        """``count`` entries sent to this process were lost unread (logged)."""
        self.atmosphere.counters.add("forwarding_lost", count)

    def _on_refresh(self) -> None:
        """The directory was refreshed: the clients' checkpoints follow,
        in a greenlet of their own (``handover.checkpoint_all``)."""
        if self.atmosphere.remote is self and not self.atmosphere.closing \
                and (self._checkpoints is None or self._checkpoints.dead):
            self._checkpoints = gevent.spawn(checkpoint_all, self)  # one at a time

    def lookups(self) -> ThreadPool:
        """The threads that wait for Redis's answers to lookups, off the hub.
        Not gevent's default pool: its threads end after 5 s idle, and
        where gevent patched the standard library a Redis client's sockets
        die with the thread that made them; these threads never end."""
        if self._pool is None:
            self._pool = ThreadPool(LOOKUP_THREADS)  # no idle timeout: threads stay
        return self._pool

    def look_up(self, lookup: Callable[[str], Any], key: str) -> Any:
        """``lookup(key)`` in :meth:`lookups`' threads.

        Raises:
            redis.RedisError: Redis could not be reached (logged once while
                it cannot, with the forwarding threads' failures).
        """
        def attempt() -> tuple[Any, Exception | None]:
            try:  # the error travels back as a value: the pool would print it
                return lookup(key), None
            except Exception as exc:  # noqa: BLE001
                return None, exc
        found, error = self.lookups().apply(attempt)
        self.forwarding.health("lookups", error)
        if error is not None:
            raise error
        return found

    # -- the requester's side ------------------------------------------------------

    def holder(self, tracking_id: str, known: bool = False) -> Holder | None:
        """The process, not this one, that holds ``tracking_id`` (see
        ``Holder.alive``), or ``None``. Waits for Redis in threads of its
        own (:meth:`lookups`), never on the hub; a Redis that cannot be
        reached counts as nobody.

        ``known=True`` (a poll or a stream, served by the holder as its own,
        which answers that it holds the client no more if so): a live holder
        found before is taken as it is while its process is known alive
        (looked up at most every ``LIVENESS_KNOWN_FOR`` seconds), saving
        the lookup's three Redis reads. A request whose client's holder
        may have changed since (a message, a goodbye: run once, where the
        client is) looks it up afresh."""
        if known:
            kept = self._holders.get(tracking_id)
            if kept is not None and self._alive(kept.node):  # (not None either)
                self._holders.move_to_end(tracking_id)
                return kept
        self.forget(tracking_id)
        try:
            found: Holder | None = self.look_up(self.forwarding.holder, tracking_id)
        except Exception:  # noqa: BLE001 -- Redis away: served here, as without it
            return None
        if found is None or found.node == self.forwarding.node:
            return None
        if found.alive and found.handover is None:
            self._liveness[found.node] = (True, monotonic())
            self._holders[tracking_id] = found
            if len(self._holders) > KNOWN_HOLDERS:
                self._holders.popitem(last=False)
        return found

    def await_claim(self, written: Event) -> None:
        """Wait (in the request's greenlet) until a claim of this process is
        in Redis (``written``: see ``Forwarding.claim``): a client's next
        request, on another process, finds its holder only then, and would
        else open it a second time. At most the Redis timeout
        (``ATMOSPHERE_REDIS_TIMEOUT``, seconds); not at all while Redis
        cannot be reached (logged once, see ``Forwarding.health``): the
        client is served here meanwhile."""
        if not self.forwarding.failing:
            written.wait(self.forwarding.timeout)

    def forget(self, tracking_id: str) -> None:
        """Who holds ``tracking_id`` is to be looked up afresh next time."""
        self._holders.pop(tracking_id, None)

    def _alive(self, node: str) -> bool | None:
        """Whether ``node`` is alive, looked up at most every
        ``LIVENESS_KNOWN_FOR`` seconds (the requests waiting on it share
        it); ``None`` if Redis cannot tell."""
        known = self._liveness.get(node)
        if known is not None and monotonic() - known[1] < LIVENESS_KNOWN_FOR:
            return known[0]
        asked = self._asking.get(node)
        if asked is not None:  # another request is looking it up: its answer
            return asked.get()
        asked = self._asking[node] = AsyncResult()
        alive: bool | None = None  # (Redis away: nobody can tell)
        try:
            alive = bool(self.look_up(self.forwarding.alive, node))
        except Exception:  # noqa: BLE001
            pass
        finally:
            del self._asking[node]
            asked.set(alive)
        if alive:
            self._liveness[node] = (True, monotonic())
        else:
            self._liveness.pop(node, None)
        return alive

    @staticmethod
    def may_act(holder: Holder, path: str, resume_key: str | None) -> bool:
        """Whether a request on ``path`` that brings ``resume_key`` may act
        for the client ``holder`` holds: the same path, and the key the
        client is bound to (if any), as for a client held here."""
        return holder.path == path and (holder.binding is None
                                        or holder.binding == binding_hash(resume_key))

    def ask(self, holder: Holder, kind: str, uuid: str, **payload: Any
            ) -> tuple[str, Queue[dict[str, Any]]]:
        """Send a request of ``kind`` for ``uuid`` to ``holder``. Returns its
        id and the queue its answer's parts arrive in (:meth:`close` it
        when done)."""
        rid = str(next(self._rids))
        replies: Queue[dict[str, Any]] = Queue()
        self._pending[rid] = replies
        self.forwarding.send(holder.node, {"kind": kind, "rid": rid, "from": self.forwarding.node,
                                           "uuid": uuid, **payload})
        return rid, replies

    def close(self, rid: str) -> None:
        """No more parts are awaited for the request ``rid``."""
        self._pending.pop(rid, None)

    def call(self, holder: Holder, kind: str, uuid: str, timeout: float,
             **payload: Any) -> dict[str, Any]:
        """:meth:`ask`, and the one reply.

        Raises:
            HolderSilent: no reply within ``timeout`` seconds.
        """
        rid, replies = self.ask(holder, kind, uuid, **payload)
        try:
            return replies.get(timeout=timeout)
        except Empty:
            raise HolderSilent(f"{holder.node} did not answer within {timeout}s") from None
        finally:
            self.close(rid)

    def relay(self, kind: str, holder: Holder, uuid: str, settings: "Settings",
              environ: dict[str, Any], **payload: Any
              ) -> Callable[[Callable[..., Any], str, list[tuple[str, str]]], Iterable[bytes]]:
        """A ``DeferredResponse`` callable that answers a request the holder
        serves (``kind``: ``poll`` or ``stream``) with what the holder
        writes: its status, the headers this process's answer lacks, and
        each part of the body as it comes. If the peer leaves first
        (``environ``'s socket, or a failed write), the holder is told: its
        poll takes nothing more from the mailbox, its stream ends."""
        rid, replies = self.ask(holder, kind, uuid, **payload)

        def left() -> None:
            self.forwarding.send(holder.node, {"kind": "cancel", "rid": rid,
                                               "from": self.forwarding.node, "uuid": uuid})
            replies.put({"left": True})

        def respond(start_response: Callable[..., Any], status: str,
                    own: list[tuple[str, str]]) -> Iterable[bytes]:
            stop_watching = watch_eof(environ, left)
            try:
                write = None
                while True:
                    part = self._next_part(replies, holder, settings)
                    if part is None:
                        log.warning("the holder %s of client %s stopped answering a %s",
                                    holder.node, uuid, kind)
                        self._lost(holder.node, uuid)
                        if write is None:
                            start_response("504 Gateway Timeout", own)
                        return []
                    if part.get(GONE) or part.get("left"):
                        if part.get(GONE):  # it holds the client no more: an empty
                            self.forget(uuid)  # answer, and the next request looks again
                        if write is None:
                            start_response("200 OK", own)
                        return []
                    if write is None:
                        names = {name.lower() for name, _ in own}
                        write = timed_writer(environ, start_response(
                            part["status"], own + [(str(name), str(value))
                                                   for name, value in part["headers"]
                                                   if str(name).lower() not in names]),
                            settings.write_timeout)
                    if "data" in part:  # "" too: the headers go out now
                        try:
                            write(part["data"].encode("latin-1"))
                        except OSError:  # the peer is gone, or stopped reading
                            left()
                            return []
                    if part.get("end"):
                        return []
            finally:
                stop_watching()
                self.close(rid)
        return respond

    def _next_part(self, replies: "Queue[dict[str, Any]]", holder: Holder,
                   settings: "Settings") -> dict[str, Any] | None:
        """The holder's next reply; ``None`` once it is dead (``_alive``:
        asked after ``FIRST_LOOK`` seconds, for a holder that died just
        before the request came, then every ``ATMOSPHERE_REDIS_PROBE_INTERVAL``)
        or silent for longer than a heartbeat interval and a few Redis round
        trips, whichever comes first."""
        deadline = monotonic() + settings.heartbeat_interval + 2 * self.forwarding.timeout \
            + self.forwarding.refresh_interval + 1
        step = min(FIRST_LOOK, self.forwarding.refresh_interval)
        while True:
            left = deadline - monotonic()
            try:
                return replies.get(timeout=max(0.0, min(step, left)))
            except Empty:
                pass
            if left <= step:
                return None
            if self._alive(holder.node) is False:  # (None: Redis cannot tell; wait on)
                return None
            step = self.forwarding.refresh_interval

    def _lost(self, node: str, uuid: str) -> None:
        """``node``, holding ``uuid``, stopped answering: both are looked up afresh."""
        self.forget(uuid)
        self._liveness.pop(node, None)

    def _on_reply(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            replies = self._pending.get(str(message.get("rid")))
            if replies is not None:
                replies.put(message)

    # -- the holder's side -------------------------------------------------------------

    def _on_request(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            gevent.spawn(self._serve, message)

    def _serve(self, message: dict[str, Any]) -> None:
        kind, rid, requester = message.get("kind"), message.get("rid"), message.get("from")
        if not isinstance(rid, str) or not isinstance(requester, str):
            log.warning("a forwarded request without its ids was skipped")
            return

        def reply(**part: Any) -> None:
            self.forwarding.send(requester, {"rid": rid, **part}, reply=True)

        if kind == "cancel":  # the peer of a poll or stream left the other process
            served = self._serving.get((requester, rid))
            if served is not None:
                served[0].lost(served[1])
            return
        connection = self.atmosphere.registry.get(str(message.get("uuid")))
        if connection is None or connection.finished:
            reply(**{GONE: True})
            return
        try:
            if kind == "message" and isinstance(message.get("text"), str):
                connection.inbound(message["text"])
                reply(status=200)
            elif kind == "goodbye":
                connection.finish()
                reply(status=200)
            elif kind in ("poll", "stream"):
                self._serve_open(kind, connection, message, reply)
            else:
                log.warning("a forwarded request of unknown kind %.40r was skipped", kind)
        except Exception:  # noqa: BLE001 -- a bad request from another process hurts nobody
            log.exception("a forwarded %s for client %s failed", kind, connection.uuid)
            reply(**{GONE: True})

    def _serve_open(self, kind: str, connection: Connection, message: dict[str, Any],
                    reply: Callable[..., None]) -> None:
        """The holder's half of a poll or a stream: the very answer a request
        of its own gets (``Poll``, or the stream of SSE or streaming), its
        status, headers and writes sent back as they happen. A stream ends
        when its peer leaves, or when the process that carries it dies."""
        params = parse_params(message["args"], message["headers"])
        transport = str(message.get("transport"))
        offset = params.offset
        last_event_id = str(message.get("last_event_id") or "")
        if transport == "sse" and offset is None and last_event_id.isdigit():
            offset = int(last_event_id)
        connection.resume(params, offset)
        head: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            head[:] = [status, headers]
            return write

        # A poll's answer: sent whole, with its end (one message). Not the
        # headers that the first poll of a client sends at once, alone
        # (``Poll.respond``): they go now.
        whole: list[str] = []

        def write(data: bytes) -> None:
            if kind == "poll" and data:
                whole.append(data.decode("latin-1"))
                return
            part: dict[str, Any] = {"data": data.decode("latin-1")}
            if head:
                part["status"], part["headers"] = head
                head.clear()
            reply(**part)

        rid, requester = str(message["rid"]), str(message["from"])
        if kind == "poll":
            poll = Poll(connection, {}, message.get("callback"))
            answer: Callable[[], Any] = partial(poll.respond, start_response, "200 OK", [])
            carrier = poll.carrier
        elif transport == "websocket":
            carrier = Carrier(transport="websocket")
            answer = partial(self._pump_websocket, connection, carrier, start_response)
        else:
            response = (sse if transport == "sse" else streaming).serve(connection, False, {})
            attached = connection.carrier
            assert attached is not None  # serve() attached it
            carrier = attached
            answer = partial(response, {"REQUEST_METHOD": "GET"}, start_response)
        self._serving[requester, rid] = (connection, carrier)
        watch = gevent.spawn(self._watch_requester, requester, connection, carrier) \
            if kind == "stream" else None
        try:
            answer()
        finally:
            self._serving.pop((requester, rid), None)
            if watch is not None:
                watch.kill()
        close = connection.mailbox.close_request  # the server closed the client: say how
        end: dict[str, Any] = {"end": True}
        if close is not None:
            end["close"] = [close.code, close.reason]
        if head:  # a poll's answer, or a stream that wrote nothing
            end.update(status=head[0], headers=head[1], data="")
        if whole:
            end["data"] = "".join(whole)
        reply(**end)

    @staticmethod
    def _pump_websocket(connection: Connection, carrier: Carrier,
                        start_response: Callable[..., Callable[[bytes], None]]) -> None:
        """The holder's half of a WebSocket carried by another process: the
        handshake if due, then each message (a write: one text frame there)
        and heartbeats, as ``WebSocketPeer`` would write them."""
        write = start_response("101 Switching Protocols", [])
        if handshake_due(connection.params):
            write(connection.handshake().encode("utf-8"))
        connection.attach(carrier)
        track = connection.track
        try:
            pump(connection, carrier, write, lambda seq, outbound: outbound.encoded(track),
                 heartbeat_text(connection.params).encode("utf-8"),
                 connection.heartbeat_interval())
        finally:
            connection.detach(carrier)

    def relay_websocket(self, holder: Holder, uuid: str, settings: "Settings", sock: Any,
                        buffered: bytes, args: dict[str, str], headers: dict[str, str]) -> None:
        """Carry a WebSocket whose client ``holder`` holds, on the upgraded
        ``sock``: what the holder writes goes out as text frames, each
        inbound message goes to the holder's ``receive`` (in order: one at a
        time), pings are answered here, a close frame is the client's
        goodbye. Returns when the socket is done (and closed)."""
        rid, replies = self.ask(holder, "stream", uuid, transport="websocket", args=args,
                                headers=headers)
        lock = Semaphore()

        def send(frame: bytes) -> None:
            with lock:
                sock.sendall(frame)

        def downstream() -> None:
            while True:
                part = self._next_part(replies, holder, settings)
                if part is None:
                    self._lost(holder.node, uuid)
                    part = {GONE: True}
                elif part.get(GONE):
                    self.forget(uuid)
                try:
                    if part.get(GONE):
                        send(close_frame(1011, "the client's holder did not answer"))
                        break
                    if part.get("data"):
                        send(encode_frame(part["data"].encode("latin-1")))
                    if part.get("end"):
                        code, reason = part.get("close") or (1000, "")
                        send(close_frame(code if sendable_close_code(code) else 1000, reason))
                        break
                except OSError:
                    break
            shut(sock)

        writer = gevent.spawn(downstream)
        frames = InboundFrames(settings.max_message_size)
        data, goodbye = buffered, False
        try:
            while not writer.dead:
                if not data:
                    data = sock.recv(READ_SIZE)
                    if not data:
                        break  # gone without a word: it may come back within the grace period
                events, data = frames.receive(data), b""
                for event in events:
                    if isinstance(event, Ping):
                        send(pong_frame(event.payload))
                    elif isinstance(event, Close):
                        goodbye = True
                        send(close_frame(echo_close_code(event.code)))
                        return
                    else:
                        self.call(holder, "message", uuid, settings.write_timeout
                                  + 2 * self.forwarding.timeout, text=event.text)
        except (OSError, FrameRefused, HolderSilent) as exc:
            if isinstance(exc, FrameRefused):
                try:
                    send(close_frame(exc.code, exc.reason))
                except OSError:
                    pass
        finally:
            self.forwarding.send(holder.node, {"kind": "goodbye" if goodbye else "cancel",
                                               "rid": rid, "from": self.forwarding.node,
                                               "uuid": uuid})
            writer.kill(block=False)
            self.close(rid)
            shut(sock)

    def _watch_requester(self, node: str, connection: Connection, carrier: Carrier) -> None:
        """End a stream carried by ``node`` once ``node`` is dead."""
        while True:
            gevent.sleep(self.forwarding.refresh_interval)
            try:
                alive = self.look_up(self.forwarding.alive, node)
            except Exception:  # noqa: BLE001 -- Redis away: nobody can tell; carry on
                continue
            if not alive:
                log.info("the process carrying client %s's stream is gone", connection.uuid)
                connection.lost(carrier)
                return


def shut(sock: Any) -> None:
    """Shut down and close ``sock``, whatever state it is in."""
    try:
        sock.shutdown(2)  # SHUT_RDWR: a FIN, and the reader wakes
    except OSError:
        pass
    sock.close()
