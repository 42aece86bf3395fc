"""Who may connect, and who may act for a client: the origin, the connection
limit, the app's ``before_connect`` hooks, and the resume key that binds a
client to the browser that opened it.

Every function answers with a decision (a :class:`~.decisions.Refusal`, or
``None`` to go on); the endpoint turns decisions into responses. They read
the current Flask request.
"""
from __future__ import annotations

import functools
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Mapping

from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.http import dump_cookie

from .decisions import Refusal
from .origins import PREFLIGHT_HEADERS, cors_headers_for, origin_allowed, page_origin

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .extension import Atmosphere

__all__ = ["Refused", "origin_refusal", "app_refusal", "cors_headers", "preflight", "own_origin",
           "origin_allowed", "resume_key", "key_from_cookies", "new_resume_key", "resume_binding",
           "binding_matches"]

log = logging.getLogger("flask_atmosphere")

#: Distinct refused origins logged at WARNING before the rest go to INFO
#: (a page hammering the server must not flood the log).
_WARN_ORIGINS = 100
_warned_origins: set[str] = set()


class Refused(Exception):
    """Raised by a ``before_connect`` hook to refuse a connection (or a
    client's return) with an HTTP status; on a WebSocket that a server
    upgraded before asking, the socket is closed with 1008 (1013 for 503).
    A hook may also ``flask.abort(status)``.

    Args:
        status: the HTTP status (e.g. 401, 403, 429).
        reason: a one-line reason, sent in the body and ``X-Atmosphere-error``.
        retry_after: seconds before the client should try again
            (``Retry-After``), for a 429 or 503; the bundled client honours it.
    """

    def __init__(self, status: int = 403, reason: str = "Forbidden",
                 retry_after: int | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


_OWN_ORIGIN_KEY = "flask_atmosphere.own_origin"


def own_origin() -> str:
    """The origin the current request addressed (``http://host:port``), as
    the app sees it: behind a proxy, after ``ProxyFix`` or the like.
    Worked out once per request (kept in its environ)."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    origin: str | None = environ.get(_OWN_ORIGIN_KEY)
    if origin is None:
        scheme = {"ws": "http", "wss": "https"}.get(req.scheme, req.scheme)
        origin = environ[_OWN_ORIGIN_KEY] = f"{scheme}://{req.host}"
    return origin


def origin_refusal(settings: "Settings", page: bool = False) -> Refusal | None:
    """The 403 for a request from a page that may not connect
    (``ATMOSPHERE_ALLOWED_ORIGINS``), or ``None``.

    Args:
        settings: the app's settings.
        page: the request must prove the page it comes from (a JSONP
            ``<script>``, which sends no ``Origin``): see
            ``origins.page_origin``. Other requests without ``Origin`` do not
            come from a page and are not checked.
    """
    own = own_origin()
    origin = request.environ.get("HTTP_ORIGIN")
    if page:
        origin = page_origin(origin, request.headers.get("Sec-Fetch-Site"),
                             request.headers.get("Referer"), own)
        if origin is None:
            _log_origin(None, own)
            return Refusal(403, "JSONP needs the page's origin (Sec-Fetch-Site or Referer)")
    if origin_allowed(origin, settings.allowed_origins, own):
        return None
    _log_origin(origin, own)
    return Refusal(403, "origin not allowed")


def _log_origin(origin: str | None, own: str) -> None:
    seen = origin or "(none proven)"
    level = logging.INFO
    if seen not in _warned_origins and len(_warned_origins) < _WARN_ORIGINS:
        _warned_origins.add(seen)
        level = logging.WARNING
    log.log(level, "refused %s %s from origin %s: the page must come from %s, or from an "
            "origin listed in ATMOSPHERE_ALLOWED_ORIGINS", request.method, request.path, seen,
            own)


def app_refusal(atmosphere: "Atmosphere", settings: "Settings", new: bool) -> Refusal | None:
    """Why the current request may not open a client (``new``) or act for
    a live one, or ``None`` if it may: 503 while shutting down or past
    ``ATMOSPHERE_MAX_CONNECTIONS`` (new clients only), else what a
    ``before_connect`` hook refuses with (``Refused``, or an ``HTTPException``
    such as ``abort(403)``), on every transport and on every return."""
    if new:
        if atmosphere.closing:
            return Refusal(503, "the server is shutting down", retry_after=2)
        limit = settings.max_connections
        if limit is not None and len(atmosphere.registry) >= limit:
            return Refusal(503, "too many connections", retry_after=10)
    for hook in atmosphere.before_connect_hooks:
        try:
            hook()
        except Refused as refused:
            return Refusal(refused.status, refused.reason, retry_after=refused.retry_after)
        except HTTPException as exc:
            status = exc.code or (exc.response.status_code if exc.response is not None else 403)
            headers = tuple((name, value) for name, value in exc.get_headers()
                            if name.lower() in ("www-authenticate", "retry-after"))
            return Refusal(status, exc.description or exc.name, headers=headers)
    return None


def cors_headers(settings: "Settings") -> dict[str, str]:
    """CORS response headers for the current request (§4): its origin,
    echoed only when it is allowed and foreign; nothing otherwise."""
    return cors_headers_for(request.environ.get("HTTP_ORIGIN"), settings.allowed_origins,
                            own_origin())


def preflight(settings: "Settings") -> dict[str, str] | Refusal:
    """The headers of the 204 answering a CORS preflight ``OPTIONS`` (§4)
    from an allowed origin, or the refusal (403) of another."""
    headers = cors_headers(settings)
    if not headers and request.headers.get("Origin") not in (None, own_origin()):
        return Refusal(403, "origin not allowed")
    headers.update(PREFLIGHT_HEADERS)
    return headers


# -- the resume key ------------------------------------------------------------

def key_from_cookies(cookies: Mapping[str, str], name: str | None) -> str | None:
    """The resume key among a request's ``cookies`` under the cookie
    ``name`` (``ATMOSPHERE_RESUME_COOKIE``), or ``None``."""
    if name is None:
        return None
    key = cookies.get(name)
    return key if key and len(key) <= 64 else None


def resume_key(settings: "Settings") -> str | None:
    """The resume key the current request brings, or ``None``."""
    if "HTTP_COOKIE" not in request.environ:  # a first visit: nothing to parse
        return None
    return key_from_cookies(request.cookies, settings.resume_cookie)


def new_resume_key() -> str:
    """A fresh resume key: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def resume_binding(settings: "Settings", key: str | None, origin: str | None, own: str,
                   secure: bool, path: str, can_set_cookie: bool
                   ) -> tuple[str | None, list[tuple[str, str]]]:
    """The resume key a new client is bound to, and the ``Set-Cookie``
    headers its answer must carry (a key the browser does not have yet).

    It is bound to ``key``, the key its request brings, or else to a new one
    that the answer gives; to nothing (anyone with its tracking id may act
    for it) if the answer cannot carry the cookie (``can_set_cookie``
    false: a socket upgraded before the app ran), or if it goes to a foreign
    page that brought none (its browser may not send the cookie back).

    Args:
        settings: the app's settings (``ATMOSPHERE_RESUME_COOKIE``).
        key: the resume key the request brings, or ``None``.
        origin: the request's ``Origin``, or ``None``.
        own: the origin the request addressed (``own_origin``).
        secure: the request came over https (or wss).
        path: the app's root path (``request.script_root``, or ``/``).
        can_set_cookie: the answer can carry a ``Set-Cookie``.
    """
    if key is not None or settings.resume_cookie is None:
        return key, []
    new_key = new_resume_key()
    if not can_set_cookie:
        return None, []
    foreign = origin not in (None, own)
    name = settings.resume_cookie
    cookie = f"{name}={new_key}{_cookie_attributes(name, path or '/', secure, foreign)}"
    return (None if foreign else new_key), [("Set-Cookie", cookie)]


@functools.lru_cache(maxsize=64)
def _cookie_attributes(name: str, path: str, secure: bool, foreign: bool) -> str:
    """What follows ``name=key`` in the resume cookie: HttpOnly, for the
    whole app, ``SameSite=Lax`` (``None`` with ``Secure`` for a foreign page
    over https, so that it travels with credentials), as Werkzeug's
    ``dump_cookie`` writes it. A key (URL-safe base64) needs no quoting."""
    cookie = dump_cookie(name, "k", path=path, httponly=True, secure=secure,
                         samesite="None" if foreign and secure else "Lax")
    return cookie[len(name) + 2:]


def binding_matches(binding: str | None, key: str | None) -> bool:
    """Whether a request bringing ``key`` may act for a client bound to
    ``binding`` (``None``: bound to nothing, anyone with its tracking id may)."""
    if binding is None:
        return True
    return key is not None and hmac.compare_digest(binding, key)
