"""Flask-SocketIO 5.x on gevent with gevent-websocket (monkey-patched, as its
documentation asks): an event ``msg`` is emitted again to everyone but the
sender. Its path is its own, ``/socket.io/``; WebSocket and long-polling.

    python bench/servers/socketio.py PORT
"""
from _common import setup

PORT = setup()

from gevent import monkey  # noqa: E402

monkey.patch_all()

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, emit  # noqa: E402

app = Flask(__name__)
sio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*", logger=False,
               engineio_logger=False)


@sio.on("msg")
def relay(data):
    emit("msg", data, broadcast=True, include_self=False)


if __name__ == "__main__":
    sio.run(app, host="127.0.0.1", port=PORT, log_output=False)
