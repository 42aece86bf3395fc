"""The floor of the stack: a raw gevent-websocket relay.

Plain WSGI on gevent's pywsgi with gevent-websocket's handler and a set of
sockets; the reading greenlet of the sender writes each inbound text frame
to every other socket itself (no queue, no writer greenlet, no framework).

    python bench/servers/raw.py PORT
"""
import sys

from _common import setup

PORT = setup()

from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

clients = set()


def app(environ, start_response):
    ws = environ.get("wsgi.websocket")
    if ws is None or environ.get("PATH_INFO") != "/the-chat":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    clients.add(ws)
    try:
        while True:
            try:
                message = ws.receive()
            except Exception:
                break
            if message is None:
                break
            for other in list(clients):
                if other is not ws:
                    try:
                        other.send_frame(message, 0x1)
                    except Exception:
                        clients.discard(other)
    finally:
        clients.discard(ws)
    return []


if __name__ == "__main__":
    server = pywsgi.WSGIServer(("127.0.0.1", PORT), app, handler_class=WebSocketHandler,
                               log=None)
    print(f"raw relay on 127.0.0.1:{PORT}", file=sys.stderr, flush=True)
    server.serve_forever()
