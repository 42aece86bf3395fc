"""One mailbox per client: the ordered, bounded queue of its outbound
messages, and the bounded history of what was sent to it.

A broadcast renders a message once into an :class:`Outbound` and appends that
same object to the mailbox of every target that cannot take it at once (an
idle WebSocket gets it written straight away, see ``broadcaster.fan_out``).
An HTTP transport waits here for work, writes, and waits again; a WebSocket's
writer is woken when something arrives. The mailbox outlives any single
request: a long-poll client between two polls, or any client reconnecting
with its tracking id, finds what was queued meanwhile.

Every message a client gets has a sequence number (1, 2, 3, …): its
*offset* in the client's stream. A client that can say how far it got (the
bundled client's ``X-Atmosphere-Offset``, an EventSource's ``Last-Event-ID``)
gets what a dead connection swallowed sent again from the *history*, the
last messages sent to it, bounded in count and bytes.

All of this runs on the server's gevent hub thread (the broadcaster hands
calls from other threads over to it), so no lock is needed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import Any

from gevent.event import Event

from .protocol import scrub_surrogates, utf16_len

__all__ = ["Outbound", "CloseRequest", "Mailbox", "MailboxFull", "WRITE_BATCH", "OVERHEAD"]

#: What one queued or kept message costs besides its UTF-8 bytes, in bytes:
#: the ``Outbound`` and its ``bytes`` object, the ``(seq, Outbound)`` pair
#: and its slot in a deque, as CPython 3.11 lays them out (measured by
#: ``tests/test_memory.py``). Counting it keeps the byte bounds honest for
#: small messages, where it is most of the cost.
OVERHEAD = 200


class Outbound:
    """One outbound message, rendered once and shared by every mailbox it is
    queued in. It holds one copy of the message: its UTF-8 bytes; every
    encoding a transport needs is made from them as it writes.

    Args:
        text: the rendered message. A lone surrogate (which no UTF-8 can
            carry; a client's JSON may hold one, ``"\\ud83d"``) becomes U+FFFD.

    Attributes:
        data: the message as UTF-8.
        units: its length in UTF-16 code units, which the length framing
            counts (§3.1).
    """
    __slots__ = ("data", "units")

    def __init__(self, text: str):
        try:
            self.data = text.encode("utf-8")
        except UnicodeEncodeError:
            text = scrub_surrogates(text)
            self.data = text.encode("utf-8")
        self.units = len(self.data) if len(self.data) == len(text) else utf16_len(text)

    @property
    def size(self) -> int:
        """What the message costs while queued or kept, in bytes: its UTF-8
        plus :data:`OVERHEAD`."""
        return len(self.data) + OVERHEAD

    @property
    def text(self) -> str:
        """The message as text (decoded anew on each use)."""
        return self.data.decode("utf-8")

    def prefix(self, track: bool) -> bytes:
        """What goes before :attr:`data` in one write: the length prefix
        ``<units>|`` if ``track`` (§3.1), else nothing."""
        return b"%d|" % self.units if track else b""

    def encoded(self, track: bool) -> bytes:
        """The bytes of one write: :attr:`data`, length-framed if ``track``."""
        return b"%d|%s" % (self.units, self.data) if track else self.data


@dataclass(frozen=True)
class CloseRequest:
    """Why and how the server ends a connection.

    Attributes:
        code: the WebSocket close code (RFC 6455 §7.4), e.g. 1000, 1001, 1008.
        reason: a short reason (at most 123 bytes of UTF-8 go on the wire).
        drain: deliver what is queued before closing.
        error: the exception behind it, if any (ends up in ``Disconnected.error``).
        final: the app closed the client (``AtmosphereClient.close``): its
            tracking id is refused until the grace period ends.
    """
    code: int = 1000
    reason: str = ""
    drain: bool = True
    error: BaseException | None = None
    final: bool = False


#: How many messages a streaming writer takes at a time: what it holds
#: outside the mailbox's bounds while a slow peer blocks its write.
WRITE_BATCH = 32


class MailboxFull(Exception):
    """A client's mailbox passed its bound: it is not reading fast enough."""


class Mailbox:
    """An ordered, bounded queue of :class:`Outbound` messages, each numbered
    with its offset (1, 2, 3, …), and the history of what was taken.

    Args:
        max_messages: the most messages it queues (``ATMOSPHERE_MAILBOX_MAX_MESSAGES``).
        max_bytes: the most bytes it queues (``ATMOSPHERE_MAILBOX_MAX_BYTES``),
            each message counted as :attr:`Outbound.size`.
        overflow: ``"disconnect"`` or ``"drop-oldest"`` (see below).
        history_messages: the most messages kept as sent
            (``ATMOSPHERE_HISTORY_MAX_MESSAGES``).
        history_bytes: the most bytes kept as sent (``ATMOSPHERE_HISTORY_MAX_BYTES``).

    When a ``put`` would pass either bound, the ``overflow`` policy decides:
    ``"disconnect"`` closes the mailbox with code 1008 and a
    :class:`MailboxFull` error, so the slow consumer is disconnected rather
    than starved in silence or allowed to hold others up; ``"drop-oldest"``
    drops the oldest messages to make room and counts them in ``dropped``.

    Once :attr:`keep` is set (a client that can say how far it got), what is
    taken, or written past the queue (:meth:`sent_now`), is kept in the
    history, and :meth:`resume` queues again what the client missed.
    """
    __slots__ = ("_queue", "_history", "_bytes", "_history_bytes", "_event", "_drained",
                 "max_messages", "max_bytes", "history_messages", "history_bytes", "keep",
                 "close_request", "next_seq", "drop_oldest", "dropped", "in_flight")

    def __init__(self, max_messages: int, max_bytes: int, overflow: str = "disconnect",
                 history_messages: int = 0, history_bytes: int = 0):
        if overflow not in ("disconnect", "drop-oldest"):
            raise ValueError(
                f"overflow policy must be 'disconnect' or 'drop-oldest', not {overflow!r}")
        self._queue: deque[tuple[int, Outbound]] = deque()     # not yet taken
        self._history: deque[tuple[int, Outbound]] = deque()   # taken, kept
        self._bytes = 0
        self._history_bytes = 0
        self._event = Event()
        self._drained: Event | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.history_messages = history_messages
        self.history_bytes = history_bytes
        #: Keep what is sent, for :meth:`resume`.
        self.keep = False
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

    @property
    def queued_bytes(self) -> int:
        """The bytes queued (each message counted as :attr:`Outbound.size`)."""
        return self._bytes

    @property
    def kept_bytes(self) -> int:
        """The bytes kept in the history (each message as :attr:`Outbound.size`)."""
        return self._history_bytes

    @property
    def pressed(self) -> bool:
        """Past half of either bound: a publisher that can wait should (see
        ``Broadcaster.publish``)."""
        return len(self._queue) * 2 > self.max_messages or self._bytes * 2 > self.max_bytes

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

    def sent_now(self, message: Outbound) -> None:
        """``message`` was written at once, past the queue: it takes the
        next offset, and is kept if :attr:`keep`."""
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.keep:
            self._kept([(seq, message)])

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

    def take(self, timeout: float | None, limit: int | None = None
             ) -> list[tuple[int, Outbound]] | None:
        """Wait as :meth:`wait` does, then remove what is queued, at most
        ``limit`` messages (``None``: all), keeping them if :attr:`keep`.

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
        if self.keep:
            self._kept(batch)
        drained = self._drained
        if drained is not None and not self.pressed:
            self._drained = None
            drained.set()
        return batch

    def _kept(self, batch: list[tuple[int, Outbound]]) -> None:
        history = self._history
        history.extend(batch)
        self._history_bytes += sum(message.size for _, message in batch)
        while history and (len(history) > self.history_messages
                           or self._history_bytes > self.history_bytes):
            self._history_bytes -= history.popleft()[1].size

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
            if self._history:
                back = {seq for seq, _ in batch}
                self._history = deque(item for item in self._history if item[0] not in back)
                self._history_bytes = sum(message.size for _, message in self._history)
        if self._queue:
            self._event.set()  # the client's current reader (a newer request) takes them

    def resume(self, offset: int) -> int:
        """The client got every message up to ``offset`` (the bundled
        client's ``X-Atmosphere-Offset``, SSE's ``Last-Event-ID``): forget
        what the history and the queue hold up to it, and queue again, at the front, what was sent
        after it. A batch an earlier request is still writing stays in
        flight: the next take waits for it.

        Returns:
            how many messages after ``offset`` are gone for good (the history
            no longer holds them): 0 when nothing is lost.
        """
        history, queue = self._history, self._queue
        while history and history[0][0] <= offset:
            self._history_bytes -= history.popleft()[1].size
        while queue and queue[0][0] <= offset:  # it got them (a checkpoint's queue)
            self._bytes -= queue.popleft()[1].size
        first = history[0][0] if history else self._queue[0][0] if self._queue else self.next_seq
        missed = list(history)
        history.clear()
        self._history_bytes = 0
        self._put_back(missed)
        return max(0, first - 1 - offset) if offset < self.next_seq else 0

    def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the mailbox is no longer
        :attr:`pressed` (or closed); return whether it is not."""
        if not self.pressed or self.closed:
            return True
        if self._drained is None:
            self._drained = Event()
        self._drained.wait(timeout)
        return not self.pressed or self.closed

    def interrupt(self) -> None:
        """End a pending :meth:`take` early (it returns ``[]``)."""
        previous, self._event = self._event, Event()
        previous.set()

    def snapshot(self) -> dict[str, Any]:
        """What another process needs to go on with this mailbox (a handover,
        ``remote.py``), as JSON: the next sequence number, the history
        (sent, kept for a resume) and the queue (not sent yet), each as
        ``[seq, text]`` pairs, oldest first."""
        return {"next": self.next_seq,
                "kept": [[seq, message.text] for seq, message in self._history],
                "queued": [[seq, message.text] for seq, message in self._queue]}

    def restore(self, snapshot: Any) -> None:
        """Go on from another process's :meth:`snapshot` (before anything is
        queued here). The history is kept for a :meth:`resume` only if this
        mailbox keeps one (:attr:`keep`); beyond the bounds, the oldest goes.

        Raises:
            ValueError: ``snapshot`` is not one (nothing is changed).
        """
        try:
            next_seq = int(snapshot["next"])
            kept = [(int(seq), Outbound(str(text))) for seq, text in snapshot["kept"]]
            queued = [(int(seq), Outbound(str(text))) for seq, text in snapshot["queued"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a mailbox snapshot: {exc}") from None
        self.next_seq = next_seq
        self._history.clear()
        self._history_bytes = 0
        if self.keep and self.history_messages:
            self._kept(kept)
        self._queue.extend(queued)
        self._bytes += sum(message.size for _, message in queued)
        if self._queue:
            self._event.set()

    def close(self, request: CloseRequest) -> bool:
        """Close the mailbox; the transport then ends the connection as
        ``request`` says. Only the first call counts: returns whether it did."""
        if self.close_request is not None:
            return False
        self.close_request = request
        self._event.set()
        if self._drained is not None:
            self._drained.set()
        return True
