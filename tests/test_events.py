"""Events are taken apart with ``match``, as the README shows."""
from flask_atmosphere import (ClientDisconnected, Connected, Disconnected, Error, JsonMessage,
                              ServerDisconnected, TextMessage)


def classify(event):
    match event:
        case Connected():
            return "connected"
        case Disconnected(ClientDisconnected()):
            return "client left"
        case Disconnected(ServerDisconnected(), error) if error is not None:
            return f"server dropped: {error}"
        case Disconnected(ServerDisconnected()):
            return "server closed"
        case Error(error):
            return f"error: {error}"
        case TextMessage(text):
            return f"text: {text}"
        case JsonMessage({"type": "typing", **rest}):
            return f"typing: {sorted(rest)}"
        case JsonMessage([first, *_]):
            return f"list from {first}"
        case JsonMessage(json):
            return f"json: {json}"


def test_match_patterns():
    assert classify(Connected()) == "connected"
    assert classify(Disconnected(ClientDisconnected())) == "client left"
    assert classify(Disconnected(ServerDisconnected())) == "server closed"
    assert classify(Disconnected(ServerDisconnected(), OSError("gone"))) == "server dropped: gone"
    assert classify(Error(ValueError("bad"))) == "error: bad"
    assert classify(TextMessage("hi")) == "text: hi"
    assert classify(JsonMessage({"type": "typing", "who": "ada", "at": 1})) == "typing: ['at', 'who']"
    assert classify(JsonMessage([1, 2])) == "list from 1"
    assert classify(JsonMessage({"type": "other"})) == "json: {'type': 'other'}"


def test_events_are_frozen_values():
    assert TextMessage("a") == TextMessage("a")
    assert hash(Disconnected(ClientDisconnected())) == hash(Disconnected(ClientDisconnected()))
    try:
        TextMessage("a").text = "b"
    except AttributeError:
        pass
    else:
        raise AssertionError("events must be immutable")
