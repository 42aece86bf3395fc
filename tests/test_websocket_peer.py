"""``WebSocketPeer`` writes, with stand-in sockets: a frame the socket does
not take from the hub goes out from a greenlet, in turn, and the write lock
is left as it was found."""
import gevent
from gevent.lock import Semaphore

from flask_atmosphere.transports.websocket import WebSocketPeer


class FullSocket:
    """The real socket, full: a non-blocking send takes nothing."""

    def send(self, data, flags=0):
        raise BlockingIOError()


class GreenSocket:
    def __init__(self):
        self.sent = []

    def sendall(self, data):
        self.sent.append(bytes(data))


def peer_over(raw, sock):
    peer = WebSocketPeer.__new__(WebSocketPeer)
    peer.lock, peer.raw, peer.sock = Semaphore(), raw, sock
    peer.write_timeout, peer.close_sent = 5, False
    return peer


def test_a_control_frame_the_full_socket_refuses_goes_out_later_and_the_lock_stays_single():
    sock = GreenSocket()
    peer = peer_over(FullSocket(), sock)
    peer._control(b"pong")
    gevent.sleep(0)
    gevent.sleep(0)
    assert sock.sent == [b"pong"]
    assert peer.lock.counter == 1  # released once, not twice: writers still take turns


def test_nothing_goes_out_after_the_close_frame():
    sock = GreenSocket()
    peer = peer_over(FullSocket(), sock)
    peer.close_sent = True
    peer._control(b"pong")
    gevent.sleep(0)
    assert sock.sent == []
