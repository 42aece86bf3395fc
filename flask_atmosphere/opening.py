"""A new client, made from the request that opens it: what the client keeps
of that request (its :class:`~.client.ConnectRequest`, its environ for the
request context of ``receive``, its session), and its
:class:`~.connection.Connection`.

The endpoint (through Flask) and the lean path (``lean/``, in front of it)
gather these values from their request; both open a client here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from werkzeug.datastructures import EnvironHeaders

from .client import ConnectRequest, ReadOnlySession
from .connection import Connection
from .protocol import PROTOCOL_PARAMS, AtmosphereParams, new_tracking_id

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .config import Settings
    from .extension import Atmosphere, Route

__all__ = ["new_connection"]

#: The environ keys kept for the request context ``receive`` runs in: what
#: routing, ``url_for``, ``request.headers`` and ``request.remote_addr`` read.
_KEPT_KEYS = frozenset({
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
    "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "wsgi.version",
    "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.errors"})


def new_connection(atmosphere: "Atmosphere", app: "Flask", settings: "Settings", route: "Route",
                   params: AtmosphereParams, uuid: str | None, opening: Mapping[str, Any], *,
                   path: str, view_args: Mapping[str, Any], args: Mapping[str, str],
                   remote_addr: str | None, transport: str, session: Any,
                   binding: str | None) -> Connection:
    """A new client, not yet opened (see ``Connection.open``).

    Args:
        atmosphere, app, settings, route: where it is served.
        params: the Atmosphere parameters of the opening request.
        uuid: the tracking id it adopts (see ``decisions.client_for``), or
            ``None`` for a new one.
        opening: the opening request's WSGI environ; its headers and the
            keys routing reads are kept, not its body or server objects.
        path: the client's broadcaster (``broadcast.path_key`` of the
            request's path).
        view_args: the route's variables, as Flask matched them.
        args: the query parameters (the first value of each name); the
            Atmosphere protocol's own are left out.
        remote_addr: the peer's address, as ``request.remote_addr``.
        transport: the transport it opens on.
        session: the Flask session of the opening request (copied, read-only).
        binding: the resume key it is bound to (``admission.resume_binding``).
    """
    environ = {key: value for key, value in opening.items()
               if key[:5] == "HTTP_" or key in _KEPT_KEYS}
    connect_request = ConnectRequest(
        path=path,
        view_args=dict(view_args),
        args={k: v for k, v in args.items() if k.lower() not in PROTOCOL_PARAMS},
        headers=EnvironHeaders(environ),
        remote_addr=remote_addr,
        transport=transport,
    )
    frozen = ReadOnlySession(session, bool(getattr(session, "permanent", False)))
    connection = Connection(atmosphere, app, settings, route, uuid or new_tracking_id(), params,
                            connect_request, frozen, environ, binding)
    if params.offset and uuid == params.tracking_id:
        # Its tracking id adopted (it came back too late, or to a new server):
        # the client counts on from where it was, and so does its mailbox.
        connection.mailbox.next_seq = params.offset + 1
    return connection
