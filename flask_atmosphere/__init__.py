"""flask-atmosphere: carefree server push for Flask.

See ``Atmosphere`` for the extension, ``AtmosphereClient`` for the
per-connection object, and ``flask_atmosphere.events`` for what it receives.

The names below are imported on first use, so that the sans-IO modules
(``protocol``, ``decisions``, ``origins``, ``config``, ``transports.wsframes``)
can be imported without Flask or gevent.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "Atmosphere": "extension",
    "AtmosphereClient": "client", "ConnectRequest": "client", "ReadOnlySession": "client",
    "Refused": "admission",
    "ConfigError": "config",
    "Connected": "events", "Disconnected": "events", "ClientDisconnected": "events",
    "ServerDisconnected": "events", "Error": "events", "TextMessage": "events",
    "JsonMessage": "events", "MessagesLost": "events",
    "ClientFilter": "filters", "Everyone": "filters", "SkipSelf": "filters",
    "OnlySelf": "filters", "Predicate": "filters", "Uuids": "filters",
    "client_filter": "filters", "FilterError": "filters",
    "MailboxFull": "mailbox",
    "Emitter": "emitter",
    "WireFormat": "wire", "JsonWireFormat": "wire", "TextWireFormat": "wire",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover  (names for type checkers: __all__ has them)
    from .admission import Refused  # noqa: F401
    from .client import AtmosphereClient, ConnectRequest, ReadOnlySession  # noqa: F401
    from .config import ConfigError  # noqa: F401
    from .events import (ClientDisconnected, Connected, Disconnected, Error,  # noqa: F401
                         JsonMessage, MessagesLost, ServerDisconnected, TextMessage)
    from .extension import Atmosphere  # noqa: F401
    from .emitter import Emitter  # noqa: F401
    from .filters import (ClientFilter, Everyone, FilterError, OnlySelf,  # noqa: F401
                          Predicate, SkipSelf, Uuids, client_filter)
    from .mailbox import MailboxFull  # noqa: F401
    from .wire import JsonWireFormat, TextWireFormat, WireFormat  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_atmosphere' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
