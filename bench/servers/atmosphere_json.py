"""flask-atmosphere as the README's chat does it: the default JSON wire
format, ``case JsonMessage(json): self.broadcast(json)`` (each message is
parsed once and rendered once per broadcast by simplejson).

    python bench/servers/atmosphere_json.py PORT
"""
from _common import setup

PORT = setup()

from flask import Flask  # noqa: E402

from flask_atmosphere import Atmosphere, AtmosphereClient, JsonMessage  # noqa: E402

app = Flask(__name__)
atmosphere = Atmosphere(app)


@atmosphere.route("/the-chat")
class Relay(AtmosphereClient):
    def receive(self, event):
        match event:
            case JsonMessage(json):
                self.broadcast(json)


if __name__ == "__main__":
    atmosphere.run(app, "127.0.0.1", PORT)
