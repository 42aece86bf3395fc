"""The chat of the Scalatra Atmosphere example, on flask-atmosphere."""
from __future__ import annotations

import time

from flask import Flask, render_template

from flask_atmosphere import (Atmosphere, AtmosphereClient, ClientDisconnected, Connected,
                              Disconnected, Everyone, JsonMessage, MessagesLost,
                              ServerDisconnected, TextMessage)

atmosphere = Atmosphere()


def now_ms() -> str:
    """Milliseconds since the epoch, as a string (the chat's ``time`` field)."""
    return str(int(time.time() * 1000))


def chat_line(author: str, message: str, **extra: str) -> dict:
    return {"author": author, "message": message, "time": now_ms(), **extra}


@atmosphere.route("/the-chat")
class ChatClient(AtmosphereClient):
    """One chat participant per connection (two tabs are two participants)."""

    @property
    def name(self) -> str:
        """The name the page gave (``?name=`` on every request), else "Someone"."""
        return self.request.args.get("name", "").strip()[:40] or "Someone"

    def receive(self, event):
        match event:
            case Connected(takeover=False):
                self.broadcast(chat_line(self.name, "joined the room", event="joined"), to=Everyone)
            case Connected():  # taken over from a process that stopped: no news to the room
                pass
            case Disconnected(ClientDisconnected()):
                self.broadcast(chat_line(self.name, "has left the room", event="left"), to=Everyone)
            case Disconnected(ServerDisconnected()):
                pass
            case TextMessage(_):
                self.send(chat_line("system", "Only json is allowed"))
            case JsonMessage(dict() as json):
                self.broadcast(json | {"time": now_ms()})  # everyone but the sender
            case JsonMessage(_):
                self.send(chat_line("system", "Messages are JSON objects"))
            case MessagesLost(count, _, reason):  # the chat keeps no history: say so
                lost = "Some messages" if count is None else f"{count} message(s)"
                self.send(chat_line("system", f"{lost} did not reach you ({reason})"))


def create_app(config: dict | None = None) -> Flask:
    """The demo app; ``FLASK_ATMOSPHERE_*`` environment variables set its
    ``ATMOSPHERE_*`` config (``FLASK_ATMOSPHERE_HEARTBEAT_INTERVAL=10``), and
    ``config`` (a dict of keys) overrides them."""
    app = Flask(__name__)
    app.config.from_prefixed_env()
    app.config.update(config or {})
    atmosphere.init_app(app)

    @app.route("/")
    def index():
        return render_template("index.html")

    return app
