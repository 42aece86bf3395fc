"""Wire formats: how a route reads inbound text and renders outbound messages.

A route has one wire format (``@atmosphere.route(rule, wire_format=...)``);
``JsonWireFormat`` is the default.
"""
from __future__ import annotations

from typing import Any

import simplejson

from .events import JsonMessage, TextMessage

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
    ``TextMessage``. Outbound, a ``str`` goes out as it is and anything else
    (``dict``, ``list``, numbers, …) as compact JSON, with non-ASCII characters
    kept as they are (the transports send UTF-8).
    """

    def parse(self, text):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return JsonMessage(simplejson.loads(text))
            except (ValueError, RecursionError):
                pass
        return TextMessage(text)

    def render(self, message):
        if isinstance(message, str):
            return message
        return simplejson.dumps(message, ensure_ascii=False, separators=(",", ":"))

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))


class TextWireFormat(WireFormat):
    """Plain text: every inbound message is a ``TextMessage``, and only ``str``
    can be sent (anything else raises ``TypeError``)."""

    def parse(self, text):
        return TextMessage(text)

    def render(self, message):
        if not isinstance(message, str):
            raise TypeError(f"TextWireFormat sends only str, not {type(message).__name__}")
        return message

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))
