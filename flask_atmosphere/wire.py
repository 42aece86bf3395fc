"""Wire formats: how a route reads inbound text and renders outbound messages.

A route has one wire format (``@atmosphere.route(rule, wire_format=...)``);
``JsonWireFormat`` is the default.
"""
from __future__ import annotations

import re
from typing import Any

import simplejson

from .events import JsonMessage, TextMessage
from .protocol import scrub_surrogates

#: A JSON escape of a UTF-16 surrogate, which may stand alone (``"\\ud83d"``).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")

__all__ = ["WireFormat", "JsonWireFormat", "TextWireFormat"]


class WireFormat:
    """The interface of a wire format. Instances must be hashable: a broadcast
    renders a message once per wire format and shares the text."""

    def parse(self, text: str) -> TextMessage | JsonMessage:
        """Turn one inbound message (already decoded text) into an event.

        Never raises for bad input: what cannot be read otherwise is a
        ``TextMessage``."""
        raise NotImplementedError

    def render(self, message: Any) -> str:
        """Turn an outbound message into the text put on the wire.

        Raises:
            TypeError: if this format cannot render ``message``.
        """
        raise NotImplementedError


class JsonWireFormat(WireFormat):
    """JSON through simplejson (the default).

    Inbound text that parses as a JSON object or array is a ``JsonMessage``;
    anything else, JSON scalars and malformed JSON included, is a
    ``TextMessage``. A lone surrogate that a JSON escape makes (``"\\ud83d"``,
    which browsers can send and no UTF-8 can carry) arrives as U+FFFD.
    Outbound, a ``str`` goes out as it is and anything else (``dict``,
    ``list``, numbers, …) as compact JSON, with non-ASCII characters kept as
    they are (the transports send UTF-8).
    """

    def parse(self, text: str) -> TextMessage | JsonMessage:
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                value = simplejson.loads(text)
            except (ValueError, RecursionError):
                return TextMessage(text)
            if _ESCAPED_SURROGATE.search(text):
                value = _scrubbed(value)
            return JsonMessage(value)
        return TextMessage(text)

    def render(self, message: Any) -> str:
        if isinstance(message, str):
            return message
        return simplejson.dumps(message, ensure_ascii=False, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class TextWireFormat(WireFormat):
    """Plain text: every inbound message is a ``TextMessage``, and only ``str``
    can be sent (anything else raises ``TypeError``)."""

    def parse(self, text: str) -> TextMessage | JsonMessage:
        return TextMessage(text)

    def render(self, message: Any) -> str:
        if not isinstance(message, str):
            raise TypeError(f"TextWireFormat sends only str, not {type(message).__name__}")
        return message

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


def _scrubbed(value: Any) -> Any:
    """``value`` (parsed JSON) with every lone surrogate in its strings, keys
    included, replaced by U+FFFD."""
    if isinstance(value, str):
        return scrub_surrogates(value)
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    if isinstance(value, dict):
        return {_scrubbed(key): _scrubbed(item) for key, item in value.items()}
    return value
