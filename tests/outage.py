"""A TCP proxy for the tests whose server can go down and come back, as a
server that crashed and was restarted behind the same address would, but
keeping its state (the app's clients stay within their grace period).
Unlike netfaults.FreezingProxy, an outage is loud: the connections end."""
from __future__ import annotations

import socket
import struct
import threading


class OutageProxy:
    """Listens on a free port of 127.0.0.1 and relays every connection to
    ``port``, in threads of its own. :meth:`down` closes every relayed
    connection (both ends see it end) and from then on resets every new one
    at once, as a host with nothing listening does; :meth:`up` relays new
    connections again. :meth:`stop` closes everything."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_down = False
        self.refused = 0  # connections reset while down
        self.sockets: list[socket.socket] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self.is_down:
                    self.refused += 1
                    self._lock.notify_all()
                    _reset(downstream)
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    @staticmethod
    def _relay(source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):  # one end is gone: so is the other
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def down(self) -> None:
        """The server goes away: every connection ends (a FIN both ways), new
        ones are reset."""
        with self._lock:
            self.is_down = True
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its relay, which closes it
            except OSError:
                pass

    def wait_refused(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` connections were reset by the outage."""
        with self._lock:
            assert self._lock.wait_for(lambda: self.refused >= count, timeout), \
                f"{self.refused} connection(s) tried during the outage, not {count}"

    def up(self) -> None:
        """The server is back: new connections get through again."""
        with self._lock:
            self.is_down = False

    def stop(self) -> None:
        self.down()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (no FIN): the peer's reads fail at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
