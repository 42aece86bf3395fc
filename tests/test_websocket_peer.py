"""``WebSocketPeer`` writes, with stand-in sockets: a frame the socket does
not take from the hub goes out from a greenlet, in turn, the write lock is
left as it was found, and a write from the hub never overtakes one that is
queued or still going out."""
from types import SimpleNamespace

import gevent

from flask_atmosphere.mailbox import Mailbox, Outbound
from flask_atmosphere.protocol import AtmosphereParams
from flask_atmosphere.transports.websocket import PeerState, WebSocketPeer
from flask_atmosphere.transports.wsframes import FRAMING, encode_frame


class FullSocket:
    """The real socket, full: a non-blocking send takes nothing."""

    def shutdown(self, how):
        pass

    def send(self, data, flags=0):
        raise BlockingIOError()


class PartSocket:
    """The real socket, taking at most ``room`` bytes of each send; ``sent``
    has what it took, in order."""

    def shutdown(self, how):
        pass

    def __init__(self, room=1 << 20):
        self.room = room
        self.sent = []

    def send(self, data, flags=0):
        self.sent.append(bytes(data[:self.room]))
        return min(len(data), self.room)


class GreenSocket:
    def __init__(self):
        self.sent = []

    def sendall(self, data):
        self.sent.append(bytes(data))

    def shutdown(self, how):
        pass


class StandInConnection:
    """What a peer reads of its connection: it serves, has a mailbox, settings
    and parameters (a plain WebSocket client: no Atmosphere heartbeat)."""
    uuid, path, track = "u1", "/chat", False
    settings = SimpleNamespace(max_message_size=1 << 20, write_timeout=5, close_timeout=5)
    params = AtmosphereParams()

    def __init__(self):
        self.mailbox = Mailbox(10, 1 << 20)

    def serves(self, carrier):
        return True

    def requeue(self, batch):
        self.mailbox.requeue(batch)


def peer_over(raw, sock):
    peer = WebSocketPeer(StandInConnection(), sock, parked=False, raw=raw)
    peer._set_ready()  # as once attached
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
    peer.state = PeerState.CLOSING  # its close frame went out
    peer._control(b"pong")
    gevent.sleep(0)
    assert sock.sent == []


def test_a_frame_the_socket_took_in_part_holds_back_later_writes_until_its_rest_is_out():
    raw, sock = PartSocket(room=3), GreenSocket()
    peer = peer_over(raw, sock)
    assert peer.write_now(b"first")
    raw.room = 100
    assert not peer.write_now(b"second")  # would land in the middle of "first"
    gevent.sleep(0)  # the rest goes out from a greenlet
    assert sock.sent == [b"st"]
    assert peer.write_now(b"third")
    assert raw.sent == [b"fir", b"third"]


def test_a_queued_message_holds_back_writes_from_the_hub_until_the_writer_sent_it():
    raw, sock = PartSocket(), GreenSocket()
    peer = peer_over(raw, sock)
    peer.mailbox.put(Outbound("queued"))
    peer.wake()  # what the connection does once it queued something
    assert not peer.write_now(b"later")  # it would overtake "queued"
    gevent.sleep(0)  # the writer
    assert sock.sent == [encode_frame(b"queued")]
    assert peer.write_now(b"later")
    assert raw.sent == [b"later"]


def test_no_write_from_the_hub_after_the_close_frame():
    raw, sock = PartSocket(), GreenSocket()
    peer = peer_over(raw, sock)
    peer.state = PeerState.ENDED  # no wait for the peer's close frame
    peer._say_goodbye(1000, "bye")
    assert not peer.write_now(b"late")
    assert raw.sent == []


class StalledSocket:
    """A socket whose peer stopped reading: a blocking send never returns."""

    def shutdown(self, how):
        pass

    def sendall(self, data):
        gevent.sleep(3600)


def test_a_writer_killed_mid_write_puts_its_batch_back_for_the_next_request():
    peer = peer_over(PartSocket(), StalledSocket())
    peer.mailbox.put(Outbound("queued"))
    peer.wake()
    gevent.sleep(0)  # the writer took it and is stuck writing it
    assert peer.mailbox.in_flight
    peer.writer.kill()
    assert not peer.mailbox.in_flight
    assert [o.text for _, o in peer.mailbox.take(0)] == ["queued"]
