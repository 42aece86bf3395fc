"""The endpoint: the view of every atmosphere route, from a request to the
transport that serves it.

It gathers what a request says (method, upgrade, Atmosphere parameters,
origin, resume key), asks ``decisions.py`` what to do, and acts: a refusal,
a preflight, a goodbye, a message upstream, or a client opened or resumed on
a transport (``transports/``), which then carries the client's messages.
The lean path (``lean/``) answers the polls of known clients, and opens new
clients' WebSockets, in front of Flask with the same decisions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from flask import Response, current_app, request, session

from .admission import (app_refusal, binding_matches, cors_headers, origin_refusal, own_origin,
                        preflight, resume_binding, resume_key)
from .connection import Connection
from .decisions import (MISSING_TRANSPORT, NOT_UPGRADED, Ask, Kind, Open, Refusal, Resume,
                        classify, client_for, parameter_refusal)
from .environ import GEVENT_WEBSOCKET_KEY, UPGRADE_KEY
from .opening import new_connection
from .protocol import AtmosphereParams, ProtocolError, parse_params, protocol_headers
from .broadcast import path_key
from . import handover as handover_
from . import lean
from .remote import GONE, HolderSilent, Remote
from .transports import longpolling, sse, streaming, websocket
from .transports.responses import (NO_CACHE, DeferredResponse, UpgradedResponse, empty_response,
                                   refusal_response)

if TYPE_CHECKING:  # pragma: no cover
    from .backplane.forwarding import Holder
    from .config import Settings
    from .extension import Atmosphere, Route

__all__ = ["serve", "plan", "Plan"]

log = logging.getLogger("flask_atmosphere")

@dataclass(frozen=True)
class Plan:
    """What the endpoint does with the current request, decided before it
    does anything (the lean path must decide alike: ``tests/test_decisions.py``).

    Attributes:
        refusal: the answer, when the request is refused outright (bad
            parameters, an unoffered transport, a foreign origin); else ``None``.
        ask: what the request asks for (``None`` if its parameters are bad).
        params: its Atmosphere parameters (``None`` if they are bad).
        existing: the live client it resumes, speaks for or closes, if any.
        client: for an opening, a message or a goodbye, what
            ``decisions.client_for`` says.
    """
    refusal: Refusal | None
    ask: Ask | None = None
    params: AtmosphereParams | None = None
    existing: Connection | None = None
    client: Resume | Open | Refusal | None = None


def plan(atmosphere: "Atmosphere", settings: "Settings", upgraded: Any) -> Plan:
    """The :class:`Plan` for the current request; ``upgraded`` is the
    WebSocket that gevent-websocket upgraded before the app ran, or ``None``.
    It changes nothing (the app's ``before_connect`` hooks run later)."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ, args = req.environ, req.args
    wants_websocket = upgraded is not None or (
        req.method == "GET" and environ.get("HTTP_UPGRADE", "").lower() == "websocket")
    try:
        params = parse_params(args, protocol_headers(environ))
    except ProtocolError as exc:
        log.info("refused %s %s: %s", req.method, req.path, exc)
        return Plan(parameter_refusal(exc))
    post_body = "X-Atmosphere-Post-Body" in args
    ask = classify(req.method, wants_websocket, upgraded is not None or UPGRADE_KEY in environ,
                   params, post_body, settings.transports)
    if isinstance(ask, Refusal):
        return Plan(ask, None, params)
    if ask.kind is Kind.PREFLIGHT:
        return Plan(None, ask, params)
    refused = origin_refusal(settings, page=ask.transport == "jsonp" or post_body)
    if refused is not None:
        atmosphere.counters.add("refused")
        return Plan(refused, ask, params)
    existing, decision = _existing(atmosphere, settings, params)
    return Plan(None, ask, params, existing, decision)


#: The answer under a server that cannot serve push (no gevent greenlets).
NOT_GEVENT = Refusal(500, "flask-atmosphere needs a gevent server: run the app with "
                          "`flask atmosphere run`, atmosphere.run(app), or gunicorn with "
                          "flask_atmosphere's worker (see the README's Serving)")
_told_not_gevent = False


def serve(atmosphere: "Atmosphere", route: "Route") -> Response:
    """Serve the current Flask request on ``route``."""
    global _told_not_gevent
    if not isinstance(gevent.getcurrent(), gevent.Greenlet):
        # Werkzeug's `flask run`, say: threads, no hub to hold connections.
        if not _told_not_gevent:
            _told_not_gevent = True
            log.error("%s", NOT_GEVENT.reason)
        return refusal_response(NOT_GEVENT)
    settings = atmosphere.settings()
    upgraded = request.environ.get(GEVENT_WEBSOCKET_KEY)  # gevent-websocket upgraded it already
    chosen = plan(atmosphere, settings, upgraded)
    ask, params = chosen.ask, chosen.params
    if chosen.refusal is not None or ask is None or params is None:
        response = _refuse(chosen.refusal or MISSING_TRANSPORT, upgraded)
    elif ask.kind is Kind.PREFLIGHT:
        headers = preflight(settings)
        if isinstance(headers, Refusal):
            return _refuse(headers, None)
        return Response(status=204, headers=headers)
    else:
        atmosphere.broadcaster.attach(gevent.get_hub())
        if ask.kind is Kind.PROBE:  # admitted as the real request would be, then 501
            refused = chosen.client if isinstance(chosen.client, Refusal) \
                else app_refusal(atmosphere, settings, new=chosen.existing is None)
            response = _refuse(refused or NOT_UPGRADED, upgraded)
        elif ask.kind is Kind.GOODBYE:
            if chosen.existing is not None:
                chosen.existing.finish()
            else:
                _forward_goodbye(atmosphere, settings, chosen)
            response = empty_response()
        elif ask.kind is Kind.MESSAGE:
            response = _message(atmosphere, settings, route, chosen)
        else:
            response = _open(atmosphere, settings, route, chosen, upgraded)
    if not isinstance(response, UpgradedResponse):  # a 101 went out already
        response.headers.update(cors_headers(settings))
    return response


def _refuse(refusal: Refusal, upgraded: Any) -> Response:
    """The answer to ``refusal``; on a socket upgraded already, a close
    frame with the refusal's close code."""
    if upgraded is not None:
        websocket.refuse(upgraded, refusal.websocket_close_code(), refusal.reason)
        return Response()
    return refusal_response(refusal)


# -- which client --------------------------------------------------------------

def _existing(atmosphere: "Atmosphere", settings: "Settings", params: AtmosphereParams
              ) -> tuple[Connection | None, Resume | Open | Refusal]:
    """The live client a request may act for, and what ``decisions.client_for``
    says of it."""
    tracking_id = params.tracking_id
    registry = atmosphere.registry
    holder = registry.get(tracking_id) if tracking_id != "0" else None
    held = holder is not None and not holder.finished
    resumable = held and holder is not None and holder.path == path_key(request.path) \
        and binding_matches(holder.binding, resume_key(settings))
    decision = client_for(tracking_id, held, resumable, registry.closed(tracking_id))
    return (holder if isinstance(decision, Resume) else None), decision


def _new_connection(atmosphere: "Atmosphere", settings: "Settings", route: "Route",
                    params: AtmosphereParams, uuid: str | None, transport: str,
                    can_set_cookie: bool) -> tuple[Connection, list[tuple[str, str]]]:
    """A new client for the current request, with the ``Set-Cookie``
    headers its answer must carry (``admission.resume_binding``)."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    binding, headers = resume_binding(settings, resume_key(settings), req.headers.get("Origin"),
                                      own_origin(), req.scheme in ("https", "wss"),
                                      req.script_root, can_set_cookie)
    connection = new_connection(
        atmosphere, current_app._get_current_object(),  # type: ignore[attr-defined]
        settings, route, params, uuid, req.environ, path=path_key(req.path),
        view_args=req.view_args or {}, args=req.args, remote_addr=req.remote_addr,
        transport=transport, session=session._get_current_object(),  # type: ignore[attr-defined]
        binding=binding)
    return connection, headers


# -- opening a transport -------------------------------------------------------

def _open(atmosphere: "Atmosphere", settings: "Settings", route: "Route", chosen: Plan,
          upgraded: Any) -> Response:
    """Open or resume a client on the transport the plan says."""
    assert chosen.ask is not None and chosen.params is not None
    transport, params = chosen.ask.transport, chosen.params
    existing, decision = chosen.existing, chosen.client
    assert transport is not None
    if transport == "websocket" and upgraded is None:  # later ones may open on the lean path
        req = request._get_current_object()  # type: ignore[attr-defined]
        lean.remember_route(current_app._get_current_object(),  # type: ignore[attr-defined]
                            route, req.environ, req.url_rule, path=path_key(req.path),
                            view_args=req.view_args or {}, own_origin=own_origin(),
                            secure=req.scheme in ("https", "wss"), script_root=req.script_root)
    if isinstance(decision, Refusal):
        return _refuse(decision, upgraded)
    # (A poll or a stream served by the holder may take a holder found
    # before: one that holds the client no more answers it empty.)
    holder = _held_elsewhere(atmosphere, chosen, known=transport != "websocket") \
        if existing is None else None
    takeover, handover = False, None  # handover: what a process that stopped left for it
    stale = holder is not None and holder.stale  # its process died: from its checkpoint
    if holder is not None and not _may_act(settings, holder):
        # Held elsewhere, and this request may not act for it: a client of
        # its own, as a held client's tracking id gets here.
        holder, decision = None, Open(None)
    elif holder is not None and (not holder.alive or holder.handover is not None):
        # Its process died, or stopped and handed it over: this one takes over.
        handover, holder, takeover = holder.handover, None, True
    refused = app_refusal(atmosphere, settings, new=existing is None and holder is None)
    if refused is not None:
        atmosphere.counters.add("refused")
        return _refuse(refused, upgraded)
    if holder is not None:
        if transport == "websocket":
            return _relay_websocket(atmosphere, settings, holder, params, upgraded)
        return _forward_open(atmosphere, settings, holder, params, transport)
    offset = params.offset
    if transport == "sse" and offset is None:
        last_event_id = request.headers.get("Last-Event-ID", "")
        offset = int(last_event_id) if last_event_id.isdigit() else None
    if existing is not None:
        existing.resume(params, offset)
        connection, new = existing, False
        cookies: list[tuple[str, str]] = []
    else:
        connection, cookies = _new_connection(atmosphere, settings, route, params,
                                              decision.uuid if isinstance(decision, Open) else None,
                                              transport,
                                              can_set_cookie=upgraded is None)
        new = True
        connection.takeover = takeover
        if transport == "sse":
            connection.keep_history()
        if takeover and atmosphere.remote is not None:
            handover_.go_on(atmosphere.remote, connection, handover, stale)  # then open, no yield
        refused = connection.open()
        if refused is not None:
            return _refuse(refused, upgraded)
        if handover is not None:
            connection.resume(params, offset, restored=True)  # what it got of the mailbox
    if transport == "websocket":
        return _websocket(connection, new, upgraded, cookies)
    response: Response
    if transport == "streaming":
        response = streaming.serve(connection, new, request.environ)
    elif transport == "sse":
        response = sse.serve(connection, new, request.environ)
    else:
        callback = request.args.get("jsonpTransport", "atmosphere") if transport == "jsonp" \
            else None
        lean.remember(connection, request.environ, own_origin())  # its next polls may go lean
        response = longpolling.serve(connection, new, request.environ, callback)
    for name, value in cookies:
        response.headers.add(name, value)
    return response


def _websocket(connection: Connection, new: bool, upgraded: Any,
               headers: list[tuple[str, str]]) -> Response:
    """Upgrade (unless the server did already) and serve ``connection``."""
    if upgraded is not None:
        upgraded.closed = True  # gevent-websocket writes nothing more: the socket is ours
        sock = upgraded.handler.socket
        websocket.serve(connection, new, sock, websocket.read_buffered(upgraded.handler.rfile),
                        parked=False)
        return Response()
    try:
        sock, buffered = request.environ[UPGRADE_KEY](headers)
    except OSError as exc:
        connection.detach(None, error=exc)  # gone before the upgrade went out
        return UpgradedResponse()
    websocket.serve(connection, new, sock, buffered, parked=True)
    return UpgradedResponse()


# -- messages and goodbyes -------------------------------------------------------

def _read_body(limit: int) -> bytes | None:
    """The request body, at most ``limit + 1`` bytes: read up to its
    ``Content-Length`` and never further, whatever the server's input stream
    does past it (pywsgi's, for a request that says ``Connection: upgrade``,
    has no end). A chunked body is read through the server's stream.
    ``None`` if the peer left before it was all there."""
    environ = request.environ
    stream = environ["wsgi.input"]
    length = request.content_length
    if length is None:
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
            return b""
        return request.stream.read(limit + 1)
    want = min(length, limit + 1)
    parts, got = [], 0
    while got < want:
        piece = stream.read(want - got)
        if not piece:
            return None
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _message(atmosphere: "Atmosphere", settings: "Settings", route: "Route",
             chosen: Plan) -> Response:
    """One message upstream (§4.6): a POST body, or JSONP's
    ``X-Atmosphere-Post-Body``. Decoded as UTF-8 whatever the Content-Type
    says (Appendix C). Answered with an empty 200 once ``receive`` is done."""
    assert chosen.params is not None
    params, existing, decision = chosen.params, chosen.existing, chosen.client
    limit = settings.max_message_size
    post_body = request.args.get("X-Atmosphere-Post-Body")
    if post_body is not None:
        text = post_body
    else:
        if (request.content_length or 0) > limit:
            return _too_big(limit)
        data = _read_body(limit)
        if data is None:
            return refusal_response(Refusal(400, "the message ended early"))
        if len(data) > limit:
            return _too_big(limit)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            log.info("refused a message to %s: not UTF-8", request.path)
            return refusal_response(Refusal(400, "the message is not UTF-8 text"))
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        return _too_big(limit)
    if isinstance(decision, Refusal):
        return refusal_response(decision)
    holder = _held_elsewhere(atmosphere, chosen) if existing is None else None
    if holder is not None and not _may_act(settings, holder):
        holder, decision = None, Open(None)  # as a held client's tracking id gets here
    takeover = holder is not None and (not holder.alive or holder.handover is not None)
    handover = holder.handover if holder is not None and takeover else None
    stale = holder is not None and takeover and holder.stale
    if takeover:
        holder = None
    refused = app_refusal(atmosphere, settings, new=existing is None and holder is None)
    if refused is not None:
        atmosphere.counters.add("refused")
        return refusal_response(refused)
    if existing is not None:
        existing.inbound(text)
        return empty_response()
    if holder is not None:
        forwarded = _forward_message(atmosphere, settings, holder, params.tracking_id, text)
        if forwarded is not None:
            return forwarded
    # A client nobody knows yet gets a fresh state, as Java does: it is
    # opened here and waits for its own GET within the grace period (or
    # ends at once if it cannot come back).
    connection, cookies = _new_connection(atmosphere, settings, route, params,
                                          decision.uuid if isinstance(decision, Open) else None,
                                          params.transport or "polling", can_set_cookie=True)
    connection.takeover = takeover
    if takeover and atmosphere.remote is not None:
        handover_.go_on(atmosphere.remote, connection, handover, stale)  # then open, no yield
    refused = connection.open()
    if refused is not None:
        return refusal_response(refused)
    connection.inbound(text)
    connection.detach(None)
    response = empty_response()
    for name, value in cookies:
        response.headers.add(name, value)
    return response


# -- clients held by another process (remote.py) ----------------------------------

#: The transports a request may open on a process that does not hold its client.
FORWARDED = ("long-polling", "jsonp", "sse", "streaming", "websocket")


def _held_elsewhere(atmosphere: "Atmosphere", chosen: Plan, known: bool = False
                    ) -> "Holder | None":
    """The other process that holds the client the request names, alive or
    dead, if the Redis backplane says one does (``known``: see ``Remote.holder``)."""
    remote, params = atmosphere.remote, chosen.params
    if remote is None or params is None or not isinstance(chosen.client, Open) \
            or chosen.client.uuid != params.tracking_id:
        return None  # only a valid tracking id that no client here holds
    return remote.holder(params.tracking_id, known)


def _may_act(settings: "Settings", holder: "Holder") -> bool:
    """Whether the request may act for the client ``holder`` holds (see ``Remote.may_act``)."""
    return Remote.may_act(holder, path_key(request.path), resume_key(settings))


def _forward_open(atmosphere: "Atmosphere", settings: "Settings", holder: "Holder",
                  params: AtmosphereParams, transport: str) -> Response:
    """A poll, or a stream, served by the process that holds its client."""
    assert atmosphere.remote is not None
    callback = request.args.get("jsonpTransport", "atmosphere") if transport == "jsonp" \
        else None
    kind = "poll" if transport in ("long-polling", "jsonp") else "stream"
    if kind == "poll":  # its next polls may go lean
        lean.remember_away(atmosphere.remote, params.tracking_id, request.environ, own_origin(),
                           path_key(request.path))
    respond = atmosphere.remote.relay(
        kind, holder, params.tracking_id, settings, request.environ,
        args=request.args.to_dict(), headers=protocol_headers(request.environ),
        callback=callback, transport=transport,
        last_event_id=request.headers.get("Last-Event-ID"))
    content_type = longpolling.content_type(callback) if kind == "poll" \
        else "text/event-stream" if transport == "sse" else "text/plain"
    return DeferredResponse(respond, content_type=content_type, headers=NO_CACHE)


def _relay_websocket(atmosphere: "Atmosphere", settings: "Settings", holder: "Holder",
                     params: AtmosphereParams, upgraded: Any) -> Response:
    """A WebSocket carried here for a client held by another process."""
    remote = atmosphere.remote
    assert remote is not None
    uuid, args, headers = params.tracking_id, request.args.to_dict(), \
        protocol_headers(request.environ)
    if upgraded is not None:  # gevent-websocket upgraded it: carried here, to the end
        upgraded.closed = True
        remote.relay_websocket(holder, uuid, settings, upgraded.handler.socket,
                               websocket.read_buffered(upgraded.handler.rfile), args, headers)
        return Response()
    try:
        sock, buffered = request.environ[UPGRADE_KEY]([])
    except OSError:
        return UpgradedResponse()  # gone before the upgrade went out
    gevent.spawn(remote.relay_websocket, holder, uuid, settings, sock, buffered, args, headers)
    return UpgradedResponse()


def _forward_message(atmosphere: "Atmosphere", settings: "Settings", holder: "Holder",
                     uuid: str, text: str) -> Response | None:
    """A message run through ``receive`` by the process that holds its
    client, answered once it has run; ``None`` if that process holds it no
    more (it is then served here, as a message of a client nobody knows)."""
    assert atmosphere.remote is not None
    try:
        answer = atmosphere.remote.call(holder, "message", uuid, _forward_timeout(settings),
                                        text=text)
    except HolderSilent as exc:
        log.warning("a message for client %s was not delivered: %s", uuid, exc)
        return refusal_response(Refusal(504, "the process holding this client did not answer"))
    return None if answer.get(GONE) else empty_response()


def _forward_goodbye(atmosphere: "Atmosphere", settings: "Settings", chosen: Plan) -> None:
    """A goodbye for a client held by another process, said there."""
    holder = _held_elsewhere(atmosphere, chosen)
    if holder is None or atmosphere.remote is None or chosen.params is None \
            or not holder.alive or not _may_act(settings, holder):
        return
    try:
        atmosphere.remote.call(holder, "goodbye", chosen.params.tracking_id,
                               _forward_timeout(settings))
    except HolderSilent as exc:
        log.warning("a goodbye for client %s was not delivered: %s", chosen.params.tracking_id,
                    exc)


def _forward_timeout(settings: "Settings") -> float:
    """Seconds to wait for the holder's answer to a message or a goodbye:
    as long as a write may take, and two Redis round trips."""
    return settings.write_timeout + 2 * settings.redis_timeout


def _too_big(limit: int) -> Response:
    log.info("refused a message to %s: more than %d bytes", request.path, limit)
    return refusal_response(Refusal(413, f"message larger than {limit} bytes"))
