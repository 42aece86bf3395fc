"""Fixes for gevent-websocket 0.10.1, applied per connection.

gevent-websocket does the HTTP upgrade and the frame format for us, but its
``WebSocket``:

* drops the status code from every close frame it sends (``close(1007)``
  sends an empty payload, which the peer reads as 1005), and echoes a peer's
  close frame without its code (RFC 6455 §5.5.1 wants the code echoed);
* reads a frame's payload whatever its announced length, so one frame can
  make the server allocate gigabytes before anything checks the size;
* lets two greenlets write frames to the same socket at once;
* unmasks payloads one byte at a time in Python.

It also notes when the peer was last heard from (any frame, a pong
included) as ``handler.atmosphere_last_seen`` (``time.monotonic()`` seconds).

:func:`adopt` turns a connection's ``WebSocket`` into :class:`FixedWebSocket`
(same slots, so only its class changes) and keeps the few per-connection
settings on the gevent handler, which is the per-connection object that has
room for them.
"""
from __future__ import annotations

import socket
import struct
from time import monotonic

from gevent.lock import Semaphore
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

__all__ = ["MessageTooBig", "FixedWebSocket", "adopt", "abort", "encode_frame"]


class MessageTooBig(WebSocketError):
    """An inbound message is larger than ``ATMOSPHERE_MAX_MESSAGE_SIZE``
    (answered with close code 1009, RFC 6455 §7.4.1)."""


def _unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (RFC 6455 §5.3), as
    one big-integer operation instead of a loop over bytes."""
    length = len(payload)
    if not length:
        return payload
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


#: Opcodes of RFC 6455 §5.2: continuation, text, binary, close, ping, pong.
_KNOWN_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})


def encode_frame(payload: bytes, opcode: int = 0x01) -> bytes:
    """One unmasked, final server frame (RFC 6455 §5.2) carrying ``payload``:
    a broadcast encodes it once and writes the same bytes to every socket."""
    return bytes(Header.encode_header(True, opcode, b"", len(payload), 0)) + payload


class FixedWebSocket(WebSocket):
    """gevent-websocket's ``WebSocket`` with the fixes listed in this module."""
    __slots__ = ()

    def read_frame(self):
        header = Header.decode_header(self.stream)
        self.handler.atmosphere_last_seen = monotonic()
        if header.flags:
            raise ProtocolError("reserved bits set without an extension")
        if header.opcode not in _KNOWN_OPCODES:  # before reading what it announces
            raise ProtocolError(f"reserved opcode {header.opcode}")
        handler = self.handler
        if header.opcode <= self.OPCODE_BINARY:  # a data frame: count it
            if header.opcode != self.OPCODE_CONTINUATION:
                handler.atmosphere_inflight = 0
            handler.atmosphere_inflight += header.length
            if handler.atmosphere_inflight > handler.atmosphere_max_message_size:
                raise MessageTooBig(f"message of more than {handler.atmosphere_max_message_size} bytes")
        if not header.length:
            return header, b""
        payload = self.raw_read(header.length)
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF reading a frame payload")
        if header.mask:
            payload = _unmask(payload, header.mask)
        return header, payload

    def send_frame(self, message, opcode):
        """Send one frame; ``message`` may be ``str`` or ``bytes`` for any opcode."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.send_frames(encode_frame(message, opcode))

    def send_frames(self, data: bytes) -> None:
        """Send ``data``: whole frames, already encoded (see :func:`encode_frame`).
        Writers take turns, so frames never interleave."""
        if self.closed:
            raise WebSocketError("the WebSocket is closed")
        with self.handler.atmosphere_write_lock:
            try:
                self.raw_write(data)
            except OSError as exc:
                raise WebSocketError(f"socket is dead: {exc}") from exc

    def handle_close(self, header, payload):
        if not payload:
            self.close(1000)
            return
        if len(payload) < 2:
            raise ProtocolError("a close frame payload of one byte")
        code = struct.unpack("!H", payload[:2])[0]
        payload[2:].decode("utf-8")  # UnicodeError -> 1007
        if not self._is_valid_close_code(code):
            raise ProtocolError(f"invalid close code {code}")
        self.close(code)

    def close(self, code=1000, message=b""):
        """Send a close frame with ``code`` and ``message`` (the reason, at most
        123 bytes of UTF-8 are kept) unless one was sent already. The socket
        stays open for the peer's answer; the server closes it afterwards."""
        if self.closed:
            return
        if isinstance(message, str):
            message = message.encode("utf-8")
        reason = (message or b"")[:123]
        try:
            self.send_frame(struct.pack("!H", code) + reason, self.OPCODE_CLOSE)
        except WebSocketError:
            pass
        finally:
            self.closed = True

    def __del__(self):
        pass


def adopt(ws: WebSocket, max_message_size: int) -> FixedWebSocket:
    """Give ``ws`` (made by gevent-websocket's handler) the fixes of this
    module and the inbound size limit ``max_message_size`` (bytes)."""
    handler = ws.handler
    handler.atmosphere_max_message_size = max_message_size
    handler.atmosphere_inflight = 0
    handler.atmosphere_write_lock = Semaphore()
    handler.atmosphere_last_seen = monotonic()
    ws.__class__ = FixedWebSocket
    return ws


def abort(ws: WebSocket) -> None:
    """Shut the connection's socket down both ways, waking any greenlet that
    reads or writes it (a peer that does not answer)."""
    try:
        ws.handler.socket.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
