"""flask-atmosphere as ``atmosphere.py`` (a ``TextWireFormat`` relay), with
the Redis backplane: every broadcast goes through Redis, to the clients of
every process that shares it (this one's included).

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 python bench/servers/atmosphere_redis.py PORT

``BENCH_REDIS_URL`` is required: the same relay without a backplane is
``atmosphere.py``. ``python -m bench backplane`` starts its own redis-server
and sets it.
"""
import os
import sys

from _common import setup

PORT = setup()
REDIS_URL = os.environ.get("BENCH_REDIS_URL")
if not REDIS_URL:
    sys.exit("set BENCH_REDIS_URL to the Redis URL of the backplane (redis://HOST:PORT/DB)")

from flask import Flask  # noqa: E402

from flask_atmosphere import Atmosphere, AtmosphereClient, TextMessage, TextWireFormat  # noqa: E402

app = Flask(__name__)
app.config["ATMOSPHERE_BACKPLANE"] = REDIS_URL
atmosphere = Atmosphere(app)


@atmosphere.route("/the-chat", wire_format=TextWireFormat())
class Relay(AtmosphereClient):
    def receive(self, event):
        match event:
            case TextMessage(text):
                self.broadcast(text)


if __name__ == "__main__":
    atmosphere.run(app, "127.0.0.1", PORT)
