"""A TCP proxy for the tests that can go silent as a real network does: a
Wi-Fi hand-over, a NAT that forgot the connection, a laptop gone to sleep.
Nothing is closed, no RST and no FIN: the bytes just stop arriving, both ways."""
from __future__ import annotations

import socket
import threading


class FreezingProxy:
    """Listens on a free port of 127.0.0.1 and relays every connection to
    ``port``, in threads of its own, until :meth:`freeze`: from then on it
    relays nothing, reads nothing, and keeps every socket open, so that
    neither end notices. After :meth:`thaw`, new connections are relayed
    again (the frozen ones stay dead, as after a NAT forgot them).
    :meth:`stop` closes everything."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            frozen = self.frozen  # this connection's fate: the proxy's now
            with self._lock:
                self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._relay, args=(source, sink, frozen),
                                 daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket,
               frozen: threading.Event) -> None:
        while not frozen.is_set():
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data or frozen.is_set():
                return  # frozen: what was read is dropped, as on a dead link
            try:
                sink.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        """From now on nothing gets through, and nobody is told."""
        self.frozen.set()

    def thaw(self) -> None:
        """New connections get through again; the frozen ones stay dead."""
        self.frozen = threading.Event()

    def stop(self) -> None:
        self.frozen.set()
        self.listener.close()
        with self._lock:
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass
