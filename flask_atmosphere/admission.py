"""Who may connect: origins, CORS, the connection limit and the app's own
``before_connect`` hooks, checked before any client is created.

``origin_allowed`` is pure; ``refusal`` reads the current Flask request.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Response, request

if TYPE_CHECKING:  # pragma: no cover
    from .extension import Atmosphere

__all__ = ["origin_allowed", "own_origin", "refusal", "cors_headers", "cors_headers_for",
           "preflight", "Refused"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WEB_SCHEME = {"ws": "http", "wss": "https"}


class Refused(Exception):
    """Raised by a ``before_connect`` hook to refuse a connection.

    Args:
        status: the HTTP status (e.g. 401, 403).
        reason: a one-line reason, sent in the body and ``X-Atmosphere-error``.
    """

    def __init__(self, status: int = 403, reason: str = "Forbidden"):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _parse(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin like ``https://a.example:8443``."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    scheme = _WEB_SCHEME.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


def _host_matches(pattern: str, host: str) -> bool:
    """``*`` stands for one or more whole leading labels: ``*.example.com``
    matches ``a.example.com`` and ``a.b.example.com``, never ``example.com``
    or ``badexample.com``."""
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host


def origin_allowed(origin: str | None, allowed: tuple[str, ...] | None, own_origin: str) -> bool:
    """Whether a request with the ``Origin`` header ``origin`` may connect.

    Args:
        origin: the ``Origin`` header, or ``None`` when absent (a client that
            is not a browser page: nothing to check).
        allowed: ``ATMOSPHERE_ALLOWED_ORIGINS``: origins such as
            ``"https://example.com:8443"`` or ``"https://*.example.com"``, or
            ``"*"`` for any; ``None`` for the same origin only.
        own_origin: the server's own origin as the request addressed it
            (``"http://localhost:8080"``).

    Scheme, host and port must match exactly (default ports filled in).
    """
    if origin is None:
        return True
    seen = _parse(origin)
    if seen is None:
        return False
    candidates = (own_origin,) if allowed is None else allowed
    for candidate in candidates:
        if candidate == "*":
            return True
        wanted = _parse(candidate)
        if wanted is not None and seen[0] == wanted[0] and seen[2] == wanted[2] \
                and _host_matches(wanted[1], seen[1]):
            return True
    return False


def own_origin() -> str:
    """The origin the current request addressed (``http://host:port``)."""
    scheme = _WEB_SCHEME.get(request.scheme, request.scheme)
    return f"{scheme}://{request.host}"


def refusal(atmosphere: "Atmosphere") -> Response | None:
    """Why the current request may not open a new client, as the answer
    to send, or ``None`` if it may: 503 while shutting down or past
    ``ATMOSPHERE_MAX_CONNECTIONS``, or what a ``before_connect`` hook refused
    with. (The origin is checked on every request, before this.)"""
    from .transports.http import error_response
    settings = atmosphere.settings()
    if atmosphere.closing:
        return error_response(503, "the server is shutting down")
    limit = settings.max_connections
    if limit is not None and len(atmosphere.registry) >= limit:
        return error_response(503, "too many connections")
    for hook in atmosphere.before_connect_hooks:
        try:
            hook()
        except Refused as refused:
            return error_response(refused.status, refused.reason)
    return None


def cors_headers(atmosphere: "Atmosphere") -> dict[str, str]:
    """CORS response headers for the current request (§4, the Java
    server's CorsInterceptor): the request's own origin, echoed only when it
    is allowed and foreign; nothing otherwise."""
    return cors_headers_for(request.headers.get("Origin"), atmosphere.settings().allowed_origins,
                            own_origin())


def cors_headers_for(origin: str | None, allowed: tuple[str, ...] | None,
                     own: str) -> dict[str, str]:
    """The CORS response headers (§4) for a request with the ``Origin``
    header ``origin`` (``None`` when absent), under
    ``ATMOSPHERE_ALLOWED_ORIGINS`` ``allowed``, addressed to the server's
    own origin ``own`` (see :func:`origin_allowed`): an empty dict for a
    request without ``Origin``, from the same origin, or from a refused one."""
    if origin is None or origin == own:
        return {}
    if not origin_allowed(origin, allowed, own):
        return {}
    headers = {"Access-Control-Allow-Origin": origin,
               "Access-Control-Expose-Headers": "X-Atmosphere-tracking-id, X-Heartbeat-Server",
               "Vary": "Origin"}
    if allowed is not None:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def preflight(atmosphere: "Atmosphere") -> Response:
    """The answer to a CORS preflight ``OPTIONS`` (§4): 204 with the
    methods and headers the clients use, for an allowed origin; 403 else."""
    headers = cors_headers(atmosphere)
    if not headers and request.headers.get("Origin") not in (None, own_origin()):
        from .transports.http import error_response
        return error_response(403, "origin not allowed")
    headers.update({
        "Access-Control-Allow-Methods": "OPTIONS, GET, POST",
        "Access-Control-Allow-Headers": (
            "Origin, Content-Type, AuthToken, X-Atmosphere-Framework, X-Requested-With, "
            "X-Atmosphere-tracking-id, X-Heartbeat-Server, X-Atmosphere-Transport, "
            "X-Atmosphere-TrackMessageSize, X-atmo-protocol"),
        "Access-Control-Max-Age": "600",
    })
    return Response(status=204, headers=headers)
