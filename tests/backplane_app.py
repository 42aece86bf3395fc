"""One process of a multi-process app for the backplane tests:

    python tests/backplane_app.py REDIS_URL [KEY=VALUE ...]

It serves the recording app of ``test_websocket.py`` (its clients broadcast
and send on command) on a free port of 127.0.0.1 with the Redis backplane,
plus ``/push?path=...&msg=...`` (a broadcast from a view) and ``/stats``
(the extension's, with ``flask_requests``: how many requests to other paths
went the full way, past the lean path, to Flask), prints ``PORT <n>`` once it listens, and stops on SIGTERM. The standard
library is patched by gevent, as in a deployed app (unless ``UNPATCHED`` is
set in its environment; ``SLOW_START`` makes it wait a while between
``init_app`` and serving).
"""
from __future__ import annotations

import os

from gevent import monkey

if not os.environ.get("UNPATCHED"):  # an app that did not patch: the server warns, and serves
    monkey.patch_all()  # first, as every entry point of a deployed app does (README, "Serving")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from flask import jsonify, request  # noqa: E402

from conftest import Recorder  # noqa: E402
from test_websocket import make_app  # noqa: E402
from flask_atmosphere.server import AtmosphereServer  # noqa: E402


def main() -> None:
    url, *pairs = sys.argv[1:]
    config = {"ATMOSPHERE_BACKPLANE": url, "ATMOSPHERE_REDIS_PROBE_INTERVAL": 0.5,
              "ATMOSPHERE_REDIS_TIMEOUT": 0.5}
    for pair in pairs:
        key, _, value = pair.partition("=")
        config[key] = json.loads(value)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app, atmosphere = make_app(Recorder(), **config)

    @app.route("/push")
    def push():
        atmosphere.broadcast(request.args["path"], request.args["msg"])
        return "ok"

    flask_requests = [0]
    lean, flask_app = app.wsgi_app, app.wsgi_app.wsgi_app  # (the lean path, then Flask)

    def counted(environ, start_response):
        if environ.get("PATH_INFO") not in ("/stats", "/push"):
            flask_requests[0] += 1
        return flask_app(environ, start_response)
    lean.wsgi_app = counted

    @app.route("/stats")
    def stats():
        return jsonify(dict(atmosphere.stats(), flask_requests=flask_requests[0]))

    if os.environ.get("SLOW_START"):  # an app with start-up work between init_app and serving
        import redis
        node = f"atmosphere:node:{atmosphere.remote.forwarding.node}"
        while not redis.Redis.from_url(url).exists(node):  # the first refresh is written
            time.sleep(0.05)
        time.sleep(2 * config["ATMOSPHERE_REDIS_PROBE_INTERVAL"])  # and more come, unserved
    server = AtmosphereServer(app, "127.0.0.1", 0)
    server.start()
    print(f"PORT {server.port}", flush=True)
    import gevent
    import signal
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    stopped.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
