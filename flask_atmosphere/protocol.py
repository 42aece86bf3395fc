"""The Atmosphere protocol as pure functions: no sockets, no Flask.

Section numbers (§) refer to ``atmosphere-protocol.md``, the description of the
official Atmosphere JavaScript clients' wire protocol that this package follows.
"""
from __future__ import annotations

import re
import uuid as _uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

__all__ = [
    "ProtocolError", "VersionNotSupported", "AtmosphereParams", "parse_params", "TRANSPORTS",
    "HEADER_KEYS",
    "DELIMITER", "HEARTBEAT_PADDING", "new_tracking_id", "valid_tracking_id", "utf16_len",
    "frame", "handshake", "handshake_due", "heartbeat_interval", "is_heartbeat",
    "PROTOCOL_PARAMS", "heartbeat_text", "padding", "scrub_surrogates",
]

#: The delimiter of handshake fields and length prefixes (Java default, §2.2).
DELIMITER = "|"
#: What a heartbeat carries, both ways (Java ``HeartbeatInterceptor`` default, §5.1).
HEARTBEAT_PADDING = "X"

#: ``X-Atmosphere-Transport`` values a client may send (§1.1, §1.4), lower case.
TRANSPORTS = frozenset({"websocket", "long-polling", "streaming", "sse", "jsonp", "polling",
                        "close", "ajax"})

#: Query parameters that belong to the protocol, not to the app (§1.3).
PROTOCOL_PARAMS = frozenset({
    "x-atmosphere-tracking-id", "x-atmosphere-framework", "x-atmosphere-transport",
    "x-atmosphere-trackmessagesize", "x-heartbeat-server", "content-type", "x-atmo-protocol",
    "x-atmosphere-post-body", "x-atmosphere-session-token", "x-atmosphere-run-id",
    "x-atmosphere-auth", "x-cache-date", "_", "jsonptransport", "x-atmosphere-offset",
})

# Java accepts a client-supplied tracking id matching this (§2.6).
_TRACKING_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# The first dotted part of X-Atmosphere-Framework, e.g. "2.3.8" of "2.3.8-javascript" (§2.1).
_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


class ProtocolError(ValueError):
    """A request's Atmosphere parameters are malformed. ``str(error)`` is a
    one-line reason fit for a 400 response or a WebSocket close reason."""


class VersionNotSupported(ProtocolError):
    """The client's ``X-Atmosphere-Framework`` is older than 2.2.1 while asking
    for the protocol handshake: Java answers 501 (§2.1, §8.1)."""


@dataclass(frozen=True)
class AtmosphereParams:
    """The Atmosphere parameters of one request (§1).

    Attributes:
        tracking_id: ``X-Atmosphere-tracking-id``; ``"0"`` when absent or unknown yet.
        framework: ``X-Atmosphere-Framework`` (e.g. ``"5.0.7"``, ``"2.3.8-javascript"``),
            or ``None`` for a client that is not an Atmosphere client.
        transport: ``X-Atmosphere-Transport`` in lower case, or ``None``.
        track_message_size: ``X-Atmosphere-TrackMessageSize=true``: every write
            is length-framed (§3).
        heartbeat_server: ``X-Heartbeat-Server`` in seconds, or ``None``.
        protocol: ``X-atmo-protocol=true``: the client expects the handshake (§2).
        content_type: ``Content-Type`` as a parameter, or ``None``.
        offset: ``X-Atmosphere-Offset``, how many messages the client got
            from its tracking id so far (a flask-atmosphere extension that
            the bundled client sends), or ``None``. A client that sends it
            acknowledges what it got: its heartbeats are whitespace and its
            handshake names no padding (see :func:`padding`), so that every
            framed message it reads is one that it counts.
    """
    tracking_id: str = "0"
    framework: str | None = None
    transport: str | None = None
    track_message_size: bool = False
    heartbeat_server: int | None = None
    protocol: bool = False
    content_type: str | None = None
    offset: int | None = None

    @property
    def acks(self) -> bool:
        """Whether the client acknowledges what it got (``X-Atmosphere-Offset``)."""
        return self.offset is not None

    @property
    def is_atmosphere(self) -> bool:
        """True for a request from an Atmosphere client (it names its framework)."""
        return self.framework is not None

    @property
    def framework_version(self) -> tuple[int, int, int] | None:
        """``X-Atmosphere-Framework`` as ``(major, minor, patch)``, or ``None``."""
        if self.framework is None:
            return None
        match = _VERSION.match(self.framework.split("-", 1)[0].strip())
        if not match:
            return None
        major, minor, patch = (int(part or 0) for part in match.groups())
        return major, minor, patch


def _flag(name: str, value: str | None) -> bool:
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ProtocolError(f"{name} must be true or false, not {value[:40]!r}")


class HeaderItems(Protocol):
    """What :func:`parse_params` reads of request headers: their items
    (a ``dict``, or Werkzeug's ``Headers``)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


#: The WSGI environ keys of the real headers that :func:`parse_params` reads
#: (they override query parameters of the same name, §1.3).
HEADER_KEYS = ("HTTP_X_ATMOSPHERE_", "HTTP_X_HEARTBEAT_SERVER", "HTTP_X_ATMO_PROTOCOL")


def protocol_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request headers of a WSGI ``environ`` (PEP 3333 ``HTTP_*`` keys)
    that :func:`parse_params` reads, by their lower-case names: the same
    items as the whole of Werkzeug's ``EnvironHeaders`` would give it,
    without walking every header."""
    return {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
            if key.startswith(HEADER_KEYS)}


def parse_params(query: Mapping[str, str], headers: HeaderItems | None = None
                 ) -> AtmosphereParams:
    """Read the Atmosphere parameters of a request.

    Both clients send them in the query string; a real HTTP header of the same
    name wins, as in Java's ``AtmosphereRequestImpl.getHeader`` (§1.3). Names
    are matched without regard to case.

    Args:
        query: the query parameters (first value of each).
        headers: the HTTP request headers, or ``None``.
    Returns:
        the parsed :class:`AtmosphereParams`.
    Raises:
        ProtocolError: a parameter is malformed (unknown transport, a
            non-numeric ``X-Heartbeat-Server``, a flag that is not true/false).
        VersionNotSupported: the handshake is asked for by a client older
            than 2.2.1 (Java's ``enforceAtmosphereVersion``, §2.1).
    """
    found: dict[str, str] = {}
    for key, value in query.items():
        lowered = key.lower()
        if lowered in PROTOCOL_PARAMS:
            found.setdefault(lowered, value)
    for key, value in (headers or {}).items():
        lowered = key.lower()
        if lowered.startswith("x-atmosphere-") \
                or lowered in ("x-heartbeat-server", "x-atmo-protocol"):
            found[lowered] = value

    transport = found.get("x-atmosphere-transport")
    if transport is not None:
        transport = transport.strip().lower()
        if transport not in TRANSPORTS:
            raise ProtocolError(f"unknown X-Atmosphere-Transport {transport[:40]!r}")
    heartbeat = found.get("x-heartbeat-server")
    if heartbeat is not None and heartbeat.strip() != "":
        try:
            heartbeat_s = int(heartbeat.strip())
        except ValueError:
            raise ProtocolError(f"X-Heartbeat-Server must be a whole number of seconds, "
                                f"not {heartbeat[:40]!r}") from None
        if heartbeat_s < 0:
            raise ProtocolError("X-Heartbeat-Server must not be negative")
    else:
        heartbeat_s = None

    offset = found.get("x-atmosphere-offset")
    if offset is not None:
        if not offset.strip().isdigit() or len(offset.strip()) > 18:
            raise ProtocolError(f"X-Atmosphere-Offset must be a whole number, not {offset[:40]!r}")
        offset_n: int | None = int(offset.strip())
    else:
        offset_n = None

    tracking_id = (found.get("x-atmosphere-tracking-id") or "0").strip() or "0"
    params = AtmosphereParams(
        tracking_id=tracking_id,
        framework=found.get("x-atmosphere-framework"),
        transport=transport,
        track_message_size=_flag("X-Atmosphere-TrackMessageSize",
                                 found.get("x-atmosphere-trackmessagesize")),
        heartbeat_server=heartbeat_s,
        protocol=_flag("X-atmo-protocol", found.get("x-atmo-protocol")),
        content_type=found.get("content-type"),
        offset=offset_n,
    )
    if params.protocol and tracking_id == "0":
        version = params.framework_version
        if version is not None and version < (2, 2, 1):
            raise VersionNotSupported("Atmosphere Protocol version not supported.")
    return params


def new_tracking_id() -> str:
    """A fresh tracking id: a random uuid4 in its 36-character form."""
    return str(_uuid.uuid4())


def valid_tracking_id(value: str) -> bool:
    """True if ``value`` may be adopted as a client's uuid: Java's rule
    ``[A-Za-z0-9_-]{1,128}``, and not the ``"0"`` that means "none yet" (§2.6)."""
    return value != "0" and _TRACKING_ID.fullmatch(value) is not None


def utf16_len(text: str) -> int:
    """The length of ``text`` in UTF-16 code units, which is JavaScript's
    ``String.length`` and what the length prefix counts (§3.1)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def frame(text: str, track: bool) -> str:
    """One write as it goes on the wire: ``<utf16 length>|<text>`` when the
    client asked for ``X-Atmosphere-TrackMessageSize`` (§3.1), else ``text``."""
    if not track:
        return text
    return f"{utf16_len(text)}{DELIMITER}{text}"


def handshake(tracking_id: str, client_heartbeat_ms: int = 0,
              padding: str = HEARTBEAT_PADDING) -> str:
    """The protocol handshake ``<uuid>|<clientHeartbeatMs>|<padding>|`` (§2.2),
    before any length framing.

    Args:
        tracking_id: the client's uuid.
        client_heartbeat_ms: how often the client should send heartbeats, in
            milliseconds; 0 asks it to send none.
        padding: the heartbeat padding the client should filter out and send.
    """
    return DELIMITER.join((tracking_id, str(int(client_heartbeat_ms)), padding)) + DELIMITER


def handshake_due(params: AtmosphereParams) -> bool:
    """Whether a connection request gets the handshake (§2.1, §2.7).

    Always when ``X-atmo-protocol=true`` and the tracking id is ``"0"``. On a
    reconnect (tracking id known) only to 5.x and later clients: they parse
    the first message after a reconnect as a handshake, while the 2.x–4.x
    clients would deliver it to the app as a message.
    """
    if not params.protocol:
        return False
    if params.tracking_id == "0":
        return True
    version = params.framework_version
    return version is not None and version[0] >= 5


def heartbeat_interval(configured_s: float, requested_s: int | None) -> float | None:
    """The server heartbeat period for a connection, in seconds, or ``None``
    for no heartbeat.

    ``X-Heartbeat-Server=0`` disables it; a positive value below the configured
    period is raised to it (Java ``HeartbeatInterceptor``, §5.1).

    Args:
        configured_s: ``ATMOSPHERE_HEARTBEAT_INTERVAL``; 0 or less disables.
        requested_s: the client's ``X-Heartbeat-Server``, or ``None``.
    """
    if configured_s <= 0 or requested_s == 0:
        return None
    if requested_s is None:
        return float(configured_s)
    return float(max(configured_s, requested_s))


def is_heartbeat(text: str, padding: str = HEARTBEAT_PADDING) -> bool:
    """True if an inbound message from an Atmosphere client is a client
    heartbeat: exactly the padding its handshake named (§5.2)."""
    return text == padding


def padding(params: AtmosphereParams) -> str:
    """The heartbeat padding a client learns from its handshake (§2.2) and
    sends as its own heartbeats (§5.2): ``"X"``, as the Java server; none
    (``""``) for a client that acknowledges what it got (``X-Atmosphere-Offset``),
    so that a message ``"X"`` reaches it as any other."""
    return "" if params.acks else HEARTBEAT_PADDING


def heartbeat_text(params: AtmosphereParams) -> str:
    """What a server heartbeat writes (§5.1): the padding, length-framed if
    the client tracks message sizes; for a client that acknowledges what it
    got, a lone line feed instead, which its length parser skips (§3.2) so
    that it counts no message for it."""
    if params.acks:
        return "\n"
    return frame(HEARTBEAT_PADDING, params.track_message_size)


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (which no UTF-8 can carry, but a
    JSON ``"\\ud83d"`` escape can make) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)
