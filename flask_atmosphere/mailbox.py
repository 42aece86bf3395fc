"""One mailbox per client: the ordered, bounded queue of its outbound messages.

A broadcast renders a message once into an :class:`Outbound` and appends that
same object to the mailbox of every target that cannot take it at once (an
idle WebSocket gets it written straight away, see ``broadcaster.fan_out``).
An HTTP transport waits here for work, writes, and waits again; a WebSocket's
writer is woken when something arrives. The mailbox outlives any single
request: a long-poll client between two polls, or any client reconnecting
with its tracking id, finds what was queued meanwhile.

All of this runs on the server's gevent hub thread (the broadcaster hands
calls from other threads over to it), so no lock is needed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from time import monotonic

from gevent.event import Event

from .protocol import frame

__all__ = ["Outbound", "CloseRequest", "Mailbox", "MailboxFull", "WRITE_BATCH"]


class Outbound:
    """One outbound message, rendered once and shared by every mailbox it is
    queued in. Its encodings are made on first use and kept.

    Attributes:
        text: the rendered message.
        data: ``text`` as UTF-8.
    """
    __slots__ = ("text", "data", "_encodings")

    def __init__(self, text: str):
        self.text = text
        self.data = text.encode("utf-8")
        self._encodings: dict = {}

    @property
    def size(self) -> int:
        """The size of the message in bytes (UTF-8)."""
        return len(self.data)

    def encoded(self, track: bool) -> bytes:
        """The UTF-8 bytes of one write: length-framed (§3) if ``track``."""
        if not track:
            return self.data
        framed = self._encodings.get("framed")
        if framed is None:
            framed = self._encodings["framed"] = frame(self.text, True).encode("utf-8")
        return framed

    def cached(self, key, make):
        """``make(self)``, computed once per ``key`` and kept: the place for a
        transport's own encoding (an SSE event, say) of a shared message."""
        value = self._encodings.get(key)
        if value is None:
            value = self._encodings[key] = make(self)
        return value


@dataclass(frozen=True)
class CloseRequest:
    """Why and how the server ends a connection.

    Attributes:
        code: the WebSocket close code (RFC 6455 §7.4), e.g. 1000, 1001, 1008.
        reason: a short reason (at most 123 bytes of UTF-8 go on the wire).
        drain: deliver what is queued before closing.
        error: the exception behind it, if any (ends up in ``Disconnected.error``).
    """
    code: int = 1000
    reason: str = ""
    drain: bool = True
    error: BaseException | None = None


#: How many messages a streaming writer takes at a time: what it holds
#: outside the mailbox's bounds while a slow peer blocks its write.
WRITE_BATCH = 32


class MailboxFull(Exception):
    """A client's mailbox passed its bound: it is not reading fast enough."""


class Mailbox:
    """An ordered, bounded queue of :class:`Outbound` messages, each numbered
    with a sequence number (1, 2, 3, …) that SSE sends as its event id.

    Args:
        max_messages: the most messages it holds (``ATMOSPHERE_MAILBOX_MAX_MESSAGES``).
        max_bytes: the most bytes it holds (``ATMOSPHERE_MAILBOX_MAX_BYTES``).

    When a ``put`` would pass either bound, the ``overflow`` policy decides:
    ``"disconnect"`` (the default) closes the mailbox with code 1008 and a
    :class:`MailboxFull` error, so the slow consumer is disconnected rather
    than starved in silence or allowed to hold others up; ``"drop-oldest"``
    drops the oldest messages to make room and counts them in ``dropped``.

    A reader that can say later where it got to (SSE, with ``Last-Event-ID``)
    takes with ``keep=True``: the last ``max_messages`` messages taken are
    kept as *sent*, and :meth:`resume` queues again exactly what it missed.
    """
    __slots__ = ("_queue", "_sent", "_bytes", "_event", "max_messages", "max_bytes",
                 "close_request", "next_seq", "drop_oldest", "dropped", "in_flight")

    def __init__(self, max_messages: int, max_bytes: int, overflow: str = "disconnect"):
        if overflow not in ("disconnect", "drop-oldest"):
            raise ValueError(f"overflow policy must be 'disconnect' or 'drop-oldest', not {overflow!r}")
        self._queue: deque = deque()   # (seq, Outbound), not yet taken
        self._sent: deque = deque()    # (seq, Outbound), taken by the last reader
        self._bytes = 0
        self._event = Event()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.close_request: CloseRequest | None = None
        self.next_seq = 1
        self.drop_oldest = overflow == "drop-oldest"
        #: How many messages the drop-oldest policy dropped.
        self.dropped = 0
        #: A taken batch is still being written: nothing may overtake it.
        self.in_flight = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self.close_request is not None

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being written, not closed: a message may
        go straight to the socket without overtaking another."""
        return not self._queue and not self.in_flight and self.close_request is None

    def put(self, message: Outbound) -> bool:
        """Append ``message``. Returns ``False`` (and queues nothing) if the
        mailbox is closed or has just closed itself for passing its bound."""
        if self.close_request is not None:
            return False
        if self.drop_oldest:
            while self._queue and (len(self._queue) >= self.max_messages
                                   or self._bytes + message.size > self.max_bytes):
                self._bytes -= self._queue.popleft()[1].size
                self.dropped += 1
        if (len(self._queue) >= self.max_messages
                or self._bytes + message.size > self.max_bytes):
            self.close(CloseRequest(
                1008, "slow consumer", drain=False,
                error=MailboxFull(f"mailbox full ({len(self._queue)} messages, "
                                  f"{self._bytes} bytes queued)")))
            return False
        self._queue.append((self.next_seq, message))
        self.next_seq += 1
        self._bytes += message.size
        self._event.set()
        return True

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: forever, ``0``: not at
        all) until a message can be taken or the mailbox closes, taking
        nothing; at once if one can be already. A message can be taken once
        it is queued and no batch taken earlier is still being written (by
        an earlier request of the client: it is written, or put back in
        front, first). A newer ``wait`` or ``take`` (another request of the
        same client) or :meth:`interrupt` ends the wait early.

        Returns:
            ``False`` if the wait was ended early that way, else ``True``.
        """
        previous, event = self._event, Event()
        self._event = event
        previous.set()  # a reader still waiting there is superseded
        if timeout == 0:
            return True
        deadline = None if timeout is None else monotonic() + timeout
        while not self._can_take():
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0 or not event.wait(left):
                break  # the time ran out
            if event is not self._event:
                return False
            event.clear()  # a message came while a batch is still out: wait on
        return event is self._event

    def _can_take(self) -> bool:
        """A take would not wait: the mailbox is closed with nothing left to
        deliver (or nothing to drain), or a message is queued and no batch
        taken earlier is still being written."""
        request = self.close_request
        if request is not None and (not request.drain or not self._queue):
            return True
        return bool(self._queue) and not self.in_flight

    def take(self, timeout: float | None, limit: int | None = None, keep: bool = False
             ) -> list[tuple[int, Outbound]] | None:
        """Wait as :meth:`wait` does, then remove what is queued, at most
        ``limit`` messages (``None``: all); with ``keep``, remember them as
        sent (see :meth:`resume`).

        Returns:
            ``(seq, message)`` pairs, oldest first; ``[]`` if the time ran out
            or the wait was ended early; ``None`` once the mailbox is closed
            and nothing is left to deliver (``close_request`` says why).
        """
        if not self.wait(timeout) and self.close_request is None:
            return []
        if self.close_request is not None and not self.close_request.drain:
            self._queue.clear()
            self._bytes = 0
        if not self._queue:
            return None if self.close_request is not None else []
        if self.in_flight:
            return []  # the time ran out before the earlier batch was written
        count = len(self._queue) if limit is None else min(limit, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        self._bytes -= sum(message.size for _, message in batch)
        self.in_flight = True
        if keep:
            self._sent.extend(batch)
            while len(self._sent) > self.max_messages:
                self._sent.popleft()
        elif self._sent:
            self._sent.clear()
        return batch

    def written(self) -> None:
        """The batch taken last is written: the next may follow (a reader
        waiting for it is woken). Every batch taken ends with this or
        :meth:`requeue`, whatever happens to its writer."""
        self.in_flight = False
        if self._queue:
            self._event.set()

    def requeue(self, batch: list[tuple[int, Outbound]]) -> None:
        """Put back, at the front, messages taken but not written (the write
        failed, or another request took the client over): the client's next
        request gets them, in order, and one waiting here is woken."""
        self.in_flight = False
        self._put_back(batch)

    def _put_back(self, batch: list[tuple[int, Outbound]]) -> None:
        """Queue ``batch`` again at the front, but no message that is queued
        already (a resume may have put it back before a failed write does)."""
        if batch:
            queued = {seq for seq, _ in self._queue}
            batch = [item for item in batch if item[0] not in queued]
            self._queue.extendleft(reversed(batch))
            self._bytes += sum(message.size for _, message in batch)
            if self._sent:
                sent = {seq for seq, _ in batch}
                self._sent = deque(item for item in self._sent if item[0] not in sent)
        if self._queue:
            self._event.set()  # the client's current reader (a newer request) takes them

    def resume(self, last_seq: int) -> None:
        """The reader got everything up to ``last_seq`` (SSE ``Last-Event-ID``):
        queue again, at the front, what was sent after it. A batch an earlier
        request is still writing stays in flight: the next take waits for it."""
        missed = [item for item in self._sent if item[0] > last_seq]
        self._sent.clear()
        self._put_back(missed)

    def interrupt(self) -> None:
        """End a pending :meth:`take` early (it returns ``[]``)."""
        previous, self._event = self._event, Event()
        previous.set()

    def close(self, request: CloseRequest) -> bool:
        """Close the mailbox; the transport then ends the connection as
        ``request`` says. Only the first call counts: returns whether it did."""
        if self.close_request is not None:
            return False
        self.close_request = request
        self._event.set()
        return True
