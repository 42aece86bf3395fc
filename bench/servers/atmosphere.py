"""flask-atmosphere, relaying the text unchanged: a ``TextWireFormat`` route
whose client broadcasts each ``TextMessage`` to every other client.

    python bench/servers/atmosphere.py PORT

With ``BENCH_REDIS_URL`` set, through that Redis backplane (see
``atmosphere_redis.py``).
"""
import os

from _common import setup

PORT = setup()

from flask import Flask  # noqa: E402

from flask_atmosphere import Atmosphere, AtmosphereClient, TextMessage, TextWireFormat  # noqa: E402

app = Flask(__name__)
app.config["ATMOSPHERE_BACKPLANE"] = os.environ.get("BENCH_REDIS_URL")  # None: in memory
app.config.from_prefixed_env()  # FLASK_ATMOSPHERE_GRACE_PERIOD=2 (python -m bench soak)
atmosphere = Atmosphere(app)


@atmosphere.route("/the-chat", wire_format=TextWireFormat())
class Relay(AtmosphereClient):
    def receive(self, event):
        match event:
            case TextMessage(text):
                self.broadcast(text)


if __name__ == "__main__":
    atmosphere.run(app, "127.0.0.1", PORT)
