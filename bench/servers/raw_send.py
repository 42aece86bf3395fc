"""The floor of a write-through design on gevent: raw.py with the frame encoded once per
message and written to each socket with one send() (sendall only for a
rest). Not in the standard comparison; `python -m bench compare --servers raw,raw_send,atmosphere ...`.

    python bench/servers/raw_send.py PORT
"""
import sys
from _common import setup
PORT = setup()
from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402
from geventwebsocket.websocket import Header  # noqa: E402

clients = {}


def app(environ, start_response):
    ws = environ.get("wsgi.websocket")
    if ws is None or environ.get("PATH_INFO") != "/the-chat":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    clients[ws] = ws.handler.socket
    try:
        while True:
            try:
                message = ws.receive()
            except Exception:
                break
            if message is None:
                break
            payload = message.encode() if isinstance(message, str) else message
            frame = bytes(Header.encode_header(True, 0x1, b"", len(payload), 0)) + payload
            for other, sock in list(clients.items()):
                if other is not ws:
                    try:
                        sent = sock.send(frame)
                        if sent < len(frame):
                            sock.sendall(frame[sent:])
                    except Exception:
                        clients.pop(other, None)
    finally:
        clients.pop(ws, None)
    return []


if __name__ == "__main__":
    server = pywsgi.WSGIServer(("127.0.0.1", PORT), app, handler_class=WebSocketHandler, log=None)
    print(f"raw fast relay on 127.0.0.1:{PORT}", file=sys.stderr, flush=True)
    server.serve_forever()
