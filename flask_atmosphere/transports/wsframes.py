"""WebSocket frames, sans-IO: what the peer sent, parsed into events, and the
server's frames, encoded once.

Parsing is wsproto's ``FrameProtocol`` (RFC 6455 §5: masking, fragmentation,
control frames, UTF-8 of text, close codes); this module adds what a server
of chat-sized messages needs on top: a size limit per message checked as the
bytes arrive (never a buffer of what a header merely announces), binary
messages taken as UTF-8 text, and every refusal turned into the close code
RFC 6455 §7.4.1 gives for it.

Upstream internals used here, checked against wsproto 1.3.2:
``wsproto.frame_protocol.FrameProtocol`` (``receive_bytes``,
``received_frames``, and ``close``/``ping``/``pong`` for the server's
control frames), its ``Frame`` fields and ``ParseFailed``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from typing import TYPE_CHECKING, Sequence

from wsproto.frame_protocol import CloseReason, Frame, FrameProtocol, Opcode, ParseFailed

if TYPE_CHECKING:  # pragma: no cover
    from ..mailbox import Outbound

__all__ = ["Message", "Ping", "Close", "FrameRefused", "InboundFrames", "encode_frame",
           "close_frame", "WebSocketFraming", "FRAMING", "TEXT", "PING", "PONG", "CLOSE",
           "sendable_close_code", "echo_close_code", "frame_header", "ping_frame", "pong_frame"]

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


@dataclass(frozen=True)
class Message:
    """A whole text message (a binary one decoded as UTF-8)."""
    text: str


@dataclass(frozen=True)
class Ping:
    """A ping, to be answered with a pong carrying ``payload`` (§5.5.2)."""
    payload: bytes


@dataclass(frozen=True)
class Close:
    """The peer's close frame: ``code`` (1005 if it gave none) and ``reason``."""
    code: int
    reason: str


class FrameRefused(Exception):
    """The peer broke the protocol or a limit; answer with close ``code``
    (1002 protocol error, 1007 invalid UTF-8, 1009 message too big)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{reason} ({code})")
        self.code = code
        self.reason = reason


class InboundFrames:
    """Turns the bytes a WebSocket client sends into events.

    Args:
        max_message_size: the most bytes one message may have
            (``ATMOSPHERE_MAX_MESSAGE_SIZE``); checked as its frames arrive.

    :meth:`receive` takes any chunk of bytes and returns the events it
    completes: :class:`Message`, :class:`Ping` and :class:`Close`; a pong
    gives no event (that the peer is alive is the caller's to note for any
    bytes). After a :class:`Close` or a :class:`FrameRefused`, nothing more
    is read.
    """
    __slots__ = ("_protocol", "_parts", "_size", "_binary", "max_message_size", "done")

    def __init__(self, max_message_size: int):
        self._protocol = FrameProtocol(client=False, extensions=[])
        self._parts: list[bytes | str] = []
        self._size = 0
        self._binary = False
        self.max_message_size = max_message_size
        self.done = False

    def receive(self, data: bytes) -> list[Message | Ping | Close]:
        """Parse ``data`` (the next bytes from the peer).

        Returns:
            the events completed by ``data``, in order.
        Raises:
            FrameRefused: the peer broke RFC 6455 or sent a message larger than
                ``max_message_size``.
        """
        if self.done:
            return []
        events: list[Message | Ping | Close] = []
        self._protocol.receive_bytes(data)
        try:
            for frame in self._protocol.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    message = self._data(frame, opcode is Opcode.BINARY)
                    if message is not None:
                        events.append(message)
                elif opcode is Opcode.PING:
                    assert isinstance(frame.payload, (bytes, bytearray))
                    events.append(Ping(bytes(frame.payload)))
                elif opcode is Opcode.CLOSE:
                    assert isinstance(frame.payload, tuple)
                    code, reason = frame.payload
                    events.append(Close(int(code), reason))
                    self.done = True
                    break
        except ParseFailed as exc:
            self.done = True
            code = int(exc.code)
            if code == CloseReason.INVALID_FRAME_PAYLOAD_DATA:
                raise FrameRefused(1007, "invalid UTF-8") from exc
            raise FrameRefused(1002, "protocol error") from exc
        except FrameRefused:
            self.done = True
            raise
        return events

    def _data(self, frame: Frame, binary: bool) -> Message | None:
        """One piece of a data message; the whole message once it is complete."""
        if not self._parts:
            self._binary = binary
        payload = frame.payload  # str for text (wsproto decodes it), bytes for binary
        assert isinstance(payload, (str, bytes, bytearray))
        self._size += len(payload.encode("utf-8") if isinstance(payload, str) else payload)
        if self._size > self.max_message_size:
            raise FrameRefused(1009, "message too big")
        self._parts.append(payload if isinstance(payload, str) else bytes(payload))
        if not frame.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if not self._binary:
            return Message("".join(str(part) for part in parts))
        try:
            return Message(b"".join(part for part in parts if isinstance(part, bytes))
                           .decode("utf-8"))
        except UnicodeError:
            raise FrameRefused(1007, "binary message is not UTF-8 text") from None


#: Serializes the server's control frames (close, ping, pong); stateless for them.
_SERVER = FrameProtocol(client=False, extensions=[])


def frame_header(length: int, opcode: int = TEXT) -> bytes:
    """The header of one unmasked, final server frame (RFC 6455 §5.2) whose
    payload is ``length`` bytes. Made here rather than by wsproto, whose
    ``send_data`` copies every payload into a new ``bytearray``: a
    broadcast's frames are made once per message and written to every socket."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def encode_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One unmasked, final server frame (RFC 6455 §5.2) carrying ``payload``."""
    return frame_header(len(payload), opcode) + payload


def sendable_close_code(code: int) -> bool:
    """Whether a server may send ``code`` in a close frame (RFC 6455 §7.4.1,
    §7.4.2): 1000-1003, 1007-1014 and 3000-4999; never 1005, 1006 or 1015,
    which only say that no code came."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def echo_close_code(code: int) -> int:
    """The code to answer a peer's close frame with (RFC 6455 §5.5.1): its
    own, or 1000 for one that carried none it may have sent (1005, 1006, 1015)."""
    return code if sendable_close_code(code) else 1000


def ping_frame(payload: bytes = b"") -> bytes:
    """A ping frame (RFC 6455 §5.5.2), by wsproto."""
    return bytes(_SERVER.ping(payload))


def pong_frame(payload: bytes) -> bytes:
    """A pong frame answering a ping with ``payload`` (RFC 6455 §5.5.3), by wsproto."""
    return bytes(_SERVER.pong(payload))


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason``, the reason cut to at most
    123 bytes of UTF-8 on a character boundary (RFC 6455 §5.5), by wsproto."""
    return bytes(_SERVER.close(code, reason))


class WebSocketFraming:
    """Frames messages as WebSocket text frames (RFC 6455 §5.6), one per
    message, each length-framed (§3 of the protocol) if ``track``.

    A broadcast frames its messages once per framing and writes the same
    bytes to every client framed alike (see ``Carrier.framing``). Frames are
    not kept on the messages: a message waiting in slow clients' mailboxes
    holds its text and UTF-8 bytes only.
    """
    __slots__ = ("track",)

    def __init__(self, track: bool):
        self.track = track

    def encode(self, outbounds: Sequence["Outbound"]) -> bytes:
        """The frames of ``outbounds``, one after another, in one copy of
        their bytes."""
        track = self.track
        parts = []
        for outbound in outbounds:
            prefix = outbound.prefix(track)
            parts.append(frame_header(len(prefix) + len(outbound.data)))
            if prefix:
                parts.append(prefix)
            parts.append(outbound.data)
        return b"".join(parts)


#: The two framings, by ``X-Atmosphere-TrackMessageSize``.
FRAMING = {False: WebSocketFraming(False), True: WebSocketFraming(True)}
