"""Every request-level decision of the Atmosphere protocol, sans-IO.

Each entry path (the Flask view in ``endpoint.py``, the lean path in
``lean/``) gathers plain values from its request and asks these functions
what to do; none of them sees a socket, a Flask request or the registry.
Section numbers (§) refer to ``atmosphere-protocol.md``.

The order of the questions an entry path asks:

1. :func:`classify`: what the request asks for (§10.2), given its method,
   whether it is (or can become) a WebSocket, and its parameters;
2. origin and the app's admission (``admission.py``);
3. :func:`client_for`: whether it resumes a live client, opens a new one
   (and under which uuid), or is refused because the app closed that client;
4. for long-polling, :func:`handshake_only` and :func:`poll_limit`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .protocol import AtmosphereParams, ProtocolError, VersionNotSupported, valid_tracking_id

__all__ = ["Kind", "Ask", "Refusal", "classify", "parameter_refusal", "OFFERED_NAME",
           "Resume", "Open", "client_for", "handshake_only", "poll_limit", "NOT_UPGRADED",
           "MISSING_TRANSPORT"]


class Kind(enum.Enum):
    """What a request to an atmosphere route asks for."""
    #: A CORS preflight ``OPTIONS`` (§4).
    PREFLIGHT = "preflight"
    #: ``X-Atmosphere-Transport=close``, any method: the client leaves (§4.7).
    GOODBYE = "goodbye"
    #: A POST (or JSONP's ``X-Atmosphere-Post-Body``): one message upstream (§4.6).
    MESSAGE = "message"
    #: Open a client, or resume one, on :attr:`Ask.transport`.
    OPEN = "open"
    #: A WebSocket that this server cannot upgrade (or a GET that names the
    #: websocket transport without asking for an upgrade): answered, once
    #: admitted, with 501 so that the clients fall back (§8.1). The bundled
    #: client sends one to learn why a WebSocket or SSE attempt failed.
    PROBE = "probe"


@dataclass(frozen=True)
class Ask:
    """The answer of :func:`classify`.

    Attributes:
        kind: what the request asks for.
        transport: for :attr:`Kind.OPEN`, the transport's name as
            ``ATMOSPHERE_TRANSPORTS`` offers it (``"websocket"``,
            ``"long-polling"``, ``"jsonp"``, ``"streaming"``, ``"sse"``).
    """
    kind: Kind
    transport: str | None = None


@dataclass(frozen=True)
class Refusal:
    """A request that is answered with an error and changes nothing.

    Attributes:
        status: the HTTP status (§8.1).
        reason: a one-line reason, sent in the body and in
            ``X-Atmosphere-error`` as the Java server does (§8.1).
        close_code: the close code (RFC 6455 §7.4.1) for a WebSocket that is
            upgraded already; by default derived from ``status`` (see
            :meth:`websocket_close_code`).
        retry_after: seconds a client should wait before it tries again
            (``Retry-After``, RFC 9110 §10.2.3), or ``None``.
        headers: more response headers (``WWW-Authenticate``, say).
    """
    status: int
    reason: str
    close_code: int | None = None
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def websocket_close_code(self) -> int:
        """The close code that says this on an upgraded WebSocket: the
        explicit one, else 1013 (try again later) for 503, 1011 for other
        server errors, and 1008 (policy violation) for the rest."""
        if self.close_code is not None:
            return self.close_code
        if self.status == 503:
            return 1013
        if self.status >= 500:
            return 1011
        return 1008


#: ``X-Atmosphere-Transport`` values that open (or resume) a client, with
#: the ``ATMOSPHERE_TRANSPORTS`` name that offers each (§1.4). The legacy
#: client's one-shot ``polling`` is served as a long-poll.
OFFERED_NAME = {"websocket": "websocket", "long-polling": "long-polling",
                "polling": "long-polling", "jsonp": "jsonp", "streaming": "streaming",
                "sse": "sse"}

#: The answer to a WebSocket the server cannot serve (§8.1).
NOT_UPGRADED = Refusal(501, "Websocket protocol not supported")
#: The answer to a GET that is neither an upgrade nor names a transport.
MISSING_TRANSPORT = Refusal(400, "an atmosphere route needs a WebSocket upgrade or "
                                 "X-Atmosphere-Transport")


def parameter_refusal(error: ProtocolError) -> Refusal:
    """The answer to malformed Atmosphere parameters: 501 for a client too
    old for the protocol handshake (Java's ``enforceAtmosphereVersion``,
    §2.1), else 400; on an upgraded WebSocket, close 1008."""
    if isinstance(error, VersionNotSupported):
        return Refusal(501, str(error), close_code=1008)
    return Refusal(400, str(error), close_code=1008)


def classify(method: str, websocket: bool, can_upgrade: bool, params: AtmosphereParams,
             post_body: bool, offered: tuple[str, ...] | frozenset[str]) -> Ask | Refusal:
    """What a request to an atmosphere route asks for (§10.2).

    Args:
        method: the HTTP method, upper case.
        websocket: the request asks for a WebSocket upgrade (a GET with
            ``Upgrade: websocket``, RFC 6455 §4.1), or arrives upgraded.
        can_upgrade: the server can upgrade it (or did).
        params: the request's Atmosphere parameters.
        post_body: the query carries ``X-Atmosphere-Post-Body`` (JSONP's
            message in a GET, §1.3).
        offered: ``ATMOSPHERE_TRANSPORTS``.
    Returns:
        an :class:`Ask`, or the :class:`Refusal` to answer with at once (an
        unknown or unoffered transport).
    """
    if method == "OPTIONS":
        return Ask(Kind.PREFLIGHT)
    transport = params.transport
    if transport == "close":
        return Ask(Kind.GOODBYE)
    if websocket:
        if not can_upgrade:
            return Ask(Kind.PROBE)
        if "websocket" not in offered:
            return NOT_UPGRADED
        return Ask(Kind.OPEN, "websocket")
    if method == "POST" or post_body:
        return Ask(Kind.MESSAGE)
    if transport == "websocket":
        return Ask(Kind.PROBE)
    name = OFFERED_NAME.get(transport) if transport is not None else None
    if name is None:
        return MISSING_TRANSPORT
    if name not in offered:
        return Refusal(501, f"transport {transport} not supported")
    return Ask(Kind.OPEN, name)


@dataclass(frozen=True)
class Resume:
    """The request carries on a live client of the same path."""


@dataclass(frozen=True)
class Open:
    """The request opens a new client.

    Attributes:
        uuid: its uuid: the request's tracking id when it may be adopted
            (§2.6), else ``None`` for a fresh one.
    """
    uuid: str | None


def client_for(tracking_id: str, held: bool, resumable: bool, closed: Refusal | None
               ) -> Resume | Open | Refusal:
    """Which client a request that opens a transport (or brings a message)
    serves.

    Args:
        tracking_id: the request's ``X-Atmosphere-tracking-id`` (``"0"``: none).
        held: a live client holds that tracking id.
        resumable: that client is on the request's path, and the request may
            act for it: it brings the key the client is bound to
            (``ATMOSPHERE_RESUME_COOKIE``), or the client is bound to none.
        closed: what the return of a client gets that the app closed within
            the grace period under that tracking id (a closed client stays
            closed), or ``None``.
    Returns:
        :class:`Resume`; :class:`Open` with the uuid to adopt: a valid
        tracking id that no client holds is adopted, as the Java server does,
        and anything else (``"0"``, an invalid id, one held by a client that
        this request may not act for) gets a fresh uuid (§2.6, §8.1: never an
        error); or the ``closed`` refusal.
    """
    if closed is not None:
        return closed
    if held:
        return Resume() if resumable else Open(None)
    return Open(tracking_id if valid_tracking_id(tracking_id) else None)


def handshake_only(params: AtmosphereParams) -> bool:
    """Whether a long-poll that opens a new client is answered with the
    protocol handshake alone, completed at once (§2.3): the first request of
    a client that asks for the protocol (tracking id ``"0"``)."""
    return params.protocol and params.tracking_id == "0"


def poll_limit(track: bool) -> int | None:
    """How many messages one long-poll answer may carry: all that are queued
    for a client that tracks message sizes, else one, since an untracked
    client would read several as one (Appendix C)."""
    return None if track else 1
