"""Origins, sans-IO: which page a request comes from, whether it may
connect, and the CORS headers it gets (§4 of ``atmosphere-protocol.md``).

An origin is ``scheme://host[:port]`` (RFC 6454); ``ATMOSPHERE_ALLOWED_ORIGINS``
holds entries of that shape (validated by ``config.py``), where the host may
start with one ``*.`` label, or the single entry ``"*"``.
"""
from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["parse_origin", "origin_allowed", "page_origin", "cors_headers_for",
           "CORS_EXPOSED", "PREFLIGHT_HEADERS"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEB_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}

#: What a CORS response lets the page read (the Java server's CorsInterceptor, §4).
CORS_EXPOSED = "X-Atmosphere-tracking-id, X-Heartbeat-Server, X-Atmosphere-error, Retry-After"

#: The answer to a preflight ``OPTIONS`` of an allowed origin (§4).
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "OPTIONS, GET, POST",
    "Access-Control-Allow-Headers": (
        "Origin, Content-Type, AuthToken, X-Atmosphere-Framework, X-Requested-With, "
        "X-Atmosphere-tracking-id, X-Heartbeat-Server, X-Atmosphere-Transport, "
        "X-Atmosphere-TrackMessageSize, X-atmo-protocol"),
    "Access-Control-Max-Age": "600",
}


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin or URL such as
    ``https://a.example:8443/page``, in lower case with the default port
    filled in (``ws``/``wss`` read as ``http``/``https``); ``None`` if it is
    not an http(s) origin (``"null"``, a file URL, garbage)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    scheme = _WEB_SCHEME.get(parts.scheme)
    if scheme is None or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


def _host_matches(pattern: str, host: str) -> bool:
    """``*.`` stands for one or more whole leading labels: ``*.example.com``
    matches ``a.example.com`` and ``a.b.example.com``, never ``example.com``
    or ``badexample.com``."""
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host


def origin_allowed(origin: str | None, allowed: tuple[str, ...] | None, own_origin: str) -> bool:
    """Whether a request from the page ``origin`` may connect.

    Args:
        origin: the page's origin, or ``None`` for a request that does not
            come from a page (no ``Origin`` header: nothing to check).
        allowed: ``ATMOSPHERE_ALLOWED_ORIGINS`` as ``config.py`` stores it: a
            tuple of origins (``"https://example.com:8443"``,
            ``"https://*.example.com"``) or ``("*",)`` for any; ``None`` for
            the server's own origin only.
        own_origin: the server's own origin as the request addressed it
            (``"http://localhost:8080"``).

    Scheme, host and port must match exactly (default ports filled in).
    """
    if origin is None:
        return True
    seen = parse_origin(origin)
    if seen is None:
        return False
    candidates = (own_origin,) if allowed is None else allowed
    for candidate in candidates:
        if candidate == "*":
            return True
        wanted = parse_origin(candidate)
        if wanted is not None and seen[0] == wanted[0] and seen[2] == wanted[2] \
                and _host_matches(wanted[1], seen[1]):
            return True
    return False


def page_origin(origin: str | None, fetch_site: str | None, referer: str | None,
                own_origin: str) -> str | None:
    """The origin of the page behind a request that must come from one (a
    JSONP ``<script>``, which sends no ``Origin``), or ``None`` if nothing
    proves it.

    Taken from ``Origin`` if present; else ``Sec-Fetch-Site: same-origin``
    (Fetch Metadata, set by the browser and not by the page) means the
    server's own origin; else the origin of ``Referer``. A page can hide its
    ``Referer`` but not its ``Sec-Fetch-Site``, so a request with neither is
    not trusted.
    """
    if origin is not None:
        return origin
    if fetch_site is not None and fetch_site.strip().lower() == "same-origin":
        return own_origin
    if referer:
        parsed = parse_origin(referer)
        if parsed is not None:
            scheme, host, port = parsed
            host = f"[{host}]" if ":" in host else host
            return f"{scheme}://{host}" if port == _DEFAULT_PORTS[scheme] \
                else f"{scheme}://{host}:{port}"
    return None


def cors_headers_for(origin: str | None, allowed: tuple[str, ...] | None,
                     own: str) -> dict[str, str]:
    """The CORS response headers (§4) for a request with the ``Origin``
    header ``origin`` (``None`` when absent), under
    ``ATMOSPHERE_ALLOWED_ORIGINS`` ``allowed``, addressed to the server's
    own origin ``own`` (see :func:`origin_allowed`): an empty dict for a
    request without ``Origin``, from the same origin, or from a refused one.
    Only an allowed origin is ever echoed."""
    if origin is None or origin == own:
        return {}
    if not origin_allowed(origin, allowed, own):
        return {}
    headers = {"Access-Control-Allow-Origin": origin,
               "Access-Control-Expose-Headers": CORS_EXPOSED,
               "Vary": "Origin"}
    if allowed is not None:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers
