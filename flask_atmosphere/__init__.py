"""flask-atmosphere: carefree server push for Flask.

See ``Atmosphere`` for the extension, ``AtmosphereClient`` for the
per-connection object, and ``flask_atmosphere.events`` for what it receives.
"""
from .admission import Refused
from .client import AtmosphereClient, ConnectRequest
from .client import ReadOnlySession
from .config import ConfigError
from .events import (ClientDisconnected, Connected, Disconnected, Error, JsonMessage,
                     MessagesLost, ServerDisconnected, TextMessage)
from .extension import Atmosphere
from .filters import ClientFilter, Everyone, OnlySelf, Predicate, SkipSelf
from .wire import JsonWireFormat, TextWireFormat, WireFormat

__all__ = [
    "Atmosphere", "AtmosphereClient", "ConnectRequest", "Refused",
    "Connected", "Disconnected", "ClientDisconnected", "ServerDisconnected", "Error",
    "TextMessage", "JsonMessage", "MessagesLost", "ReadOnlySession", "ConfigError",
    "ClientFilter", "Everyone", "SkipSelf", "OnlySelf", "Predicate",
    "WireFormat", "JsonWireFormat", "TextWireFormat",
]
__version__ = "0.1.0"
