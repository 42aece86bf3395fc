"""One mailbox per client: the ordered, bounded queue of its outbound messages.

A broadcast renders a message once into an :class:`Outbound` and appends that
same object to the mailbox of every target; it never touches a socket. The
client's transport is the only reader: it waits here for work, writes, and
waits again. All of this runs on the server's gevent hub thread (the
broadcaster hands calls from other threads over to it), so no lock is needed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gevent.event import Event

from .protocol import frame

__all__ = ["Outbound", "CloseRequest", "Mailbox"]


class Outbound:
    """One outbound message, rendered once and shared by every mailbox it is
    queued in. Its encodings are made on first use and kept.

    Attributes:
        text: the rendered message.
        size: its size in bytes once encoded as UTF-8.
    """
    __slots__ = ("text", "data", "_framed")

    def __init__(self, text: str):
        self.text = text
        self.data = text.encode("utf-8")
        self._framed: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def encoded(self, track: bool) -> bytes:
        """The UTF-8 bytes of one write: length-framed (§3) if ``track``."""
        if not track:
            return self.data
        if self._framed is None:
            self._framed = frame(self.text, True).encode("utf-8")
        return self._framed


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


class MailboxFull(Exception):
    """A client's mailbox passed its bound: it is not reading fast enough."""


class Mailbox:
    """An ordered, bounded queue of :class:`Outbound` messages.

    Args:
        max_messages: the most messages it holds (``ATMOSPHERE_MAILBOX_MAX_MESSAGES``).
        max_bytes: the most bytes it holds (``ATMOSPHERE_MAILBOX_MAX_BYTES``).

    When a ``put`` would pass either bound, the mailbox closes itself with
    code 1008 and a :class:`MailboxFull` error: the slow consumer is
    disconnected rather than starved in silence or allowed to hold others up.
    """
    __slots__ = ("_queue", "_bytes", "_event", "max_messages", "max_bytes", "close_request",
                 "next_seq")

    def __init__(self, max_messages: int, max_bytes: int):
        self._queue: deque = deque()
        self._bytes = 0
        self._event = Event()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.close_request: CloseRequest | None = None
        #: The sequence number the next message gets (1, 2, 3, …).
        self.next_seq = 1

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self.close_request is not None

    def put(self, message: Outbound) -> bool:
        """Append ``message``. Returns ``False`` (and queues nothing) if the
        mailbox is closed or has just closed itself for passing its bound."""
        if self.close_request is not None:
            return False
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

    def take(self, timeout: float | None) -> list[Outbound] | None:
        """Wait up to ``timeout`` seconds (``None``: forever) for messages and
        remove them all.

        Returns:
            the queued messages, oldest first; ``[]`` if the time ran out;
            ``None`` once the mailbox is closed and there is nothing left to
            deliver (then ``close_request`` says why).
        """
        if not self._queue and self.close_request is None:
            self._event.clear()
            self._event.wait(timeout)
        if self.close_request is not None and not self.close_request.drain:
            self._queue.clear()
            self._bytes = 0
        if not self._queue:
            return None if self.close_request is not None else []
        batch = [message for _, message in self._queue]
        self._queue.clear()
        self._bytes = 0
        return batch

    def close(self, request: CloseRequest) -> bool:
        """Close the mailbox; the transport then ends the connection as
        ``request`` says. Only the first call counts: returns whether it did."""
        if self.close_request is not None:
            return False
        self.close_request = request
        self._event.set()
        return True
