"""A connection that dies in silence (no FIN, no RST: a network hand-over, a
NAT timeout) swallows whatever the server wrote into it. A client that says
how far it got (``X-Atmosphere-Offset``, as the bundled client does; SSE's
``Last-Event-ID``) gets it all again when it comes back, in order, once; and
what the history no longer holds is announced, never lost in silence."""
from __future__ import annotations

import requests
from conftest import ATMOSPHERE_PARAMS, WSClient
from http_clients import PollClient, StreamClient
from netfaults import FreezingProxy
from test_faults import raw_get
from test_websocket import events_of, make_app
from flask_atmosphere import MessagesLost

SENT = [f"m{i}" for i in range(40)]


def served(live, recorder, **config):
    app, atmosphere = make_app(recorder, **config)
    server = live(app)
    return server, atmosphere, f"http://127.0.0.1:{server.port}"


def broadcast_all_of(server, atmosphere, messages):
    def go():
        for message in messages:
            atmosphere.broadcast("/quiet", message)
    server.call(go)


def wait_until_written(server, atmosphere, uuid, count):
    """Until the server has sent ``count`` messages to the client (into the dead
    connection, as far as it can tell), with nothing queued or going out."""
    def written():
        mailbox = atmosphere.registry.get(uuid).mailbox
        return mailbox.next_seq == count + 1 and not len(mailbox) and not mailbox.in_flight
    server.wait_until(written)


def websocket_back_after_a_silent_drop(server, atmosphere):
    """A WebSocket client that got the first 20 of ``SENT``, then lost its
    connection in silence while the other 20 went into it, and came back
    (its inactivity timeout), elsewhere, saying it had 20."""
    proxy = FreezingProxy(server.port)
    query = ATMOSPHERE_PARAMS | {"X-Atmosphere-Offset": "0"}
    first = WSClient(f"ws://127.0.0.1:{proxy.port}/quiet?" + requests.compat.urlencode(query),
                     track=True, protocol=True)
    broadcast_all_of(server, atmosphere, SENT[:20])
    assert [first.recv() for _ in range(20)] == SENT[:20]
    proxy.freeze()
    broadcast_all_of(server, atmosphere, SENT[20:])
    wait_until_written(server, atmosphere, first.uuid, 40)
    again = WSClient(server.url("/quiet", **query | {"X-Atmosphere-tracking-id": first.uuid,
                                                     "X-Atmosphere-Offset": "20"}),
                     track=True, protocol=True, cookie=first.cookie)
    proxy.stop()
    assert again.uuid == first.uuid
    return again


def test_a_websocket_client_that_says_how_far_it_got_misses_nothing(live, recorder):
    server, atmosphere, _ = served(live, recorder)
    again = websocket_back_after_a_silent_drop(server, atmosphere)
    assert [again.recv() for _ in range(20)] == SENT[20:]
    server.call(atmosphere.broadcast, "/quiet", "after")
    assert again.recv() == "after"  # nothing twice


def test_a_long_poll_answer_lost_on_the_way_is_answered_again(live, recorder):
    server, atmosphere, base = served(live, recorder)
    client = PollClient(base, "/quiet", acks=True)
    broadcast_all_of(server, atmosphere, SENT[:20])
    assert client.poll_until(20) == SENT[:20]
    proxy = FreezingProxy(server.port)
    raw_get(proxy.port, "/quiet?" + requests.compat.urlencode(client.query()),
            cookies=client.http.cookies.get_dict())  # held, then answered into the void
    server.wait_until(lambda: atmosphere.registry.get(client.uuid).carrier is not None)
    proxy.freeze()
    broadcast_all_of(server, atmosphere, SENT[20:])
    wait_until_written(server, atmosphere, client.uuid, 40)
    assert client.poll_until(20) == SENT[20:]  # the next poll says it has 20
    server.call(atmosphere.broadcast, "/quiet", "after")
    assert client.poll() == ["after"]
    proxy.stop()


def test_an_x_reaches_a_client_that_acknowledges(live, recorder):
    # Its heartbeats are whitespace, and its handshake names no padding.
    server, atmosphere, base = served(live, recorder)
    client = PollClient(base, "/quiet", acks=True)
    assert client.handshake_response.text.endswith(f"{client.uuid}|0||")
    server.call(atmosphere.broadcast, "/quiet", "X")
    assert client.poll() == ["X"]


def stream_through(proxy_port, transport):
    return StreamClient(f"http://127.0.0.1:{proxy_port}", "/quiet", transport, acks=True,
                        extra={"X-Atmosphere-Offset": "0"})


def test_a_stream_that_says_how_far_it_got_misses_nothing(live, recorder):
    for transport in ("streaming", "sse"):
        server, atmosphere, base = served(live, recorder)
        proxy = FreezingProxy(server.port)
        first = stream_through(proxy.port, transport)
        broadcast_all_of(server, atmosphere, SENT[:20])
        assert first.take(20) == SENT[:20]
        proxy.freeze()
        broadcast_all_of(server, atmosphere, SENT[20:])
        wait_until_written(server, atmosphere, first.uuid, 40)
        again = StreamClient(base, "/quiet", transport, tracking_id=first.uuid, acks=True,
                             http=first.http, extra={"X-Atmosphere-Offset": "20"})
        assert again.next().split("|")[0] == first.uuid  # the 5.x handshake again (§2.7)
        assert again.take(20) == SENT[20:], transport
        server.call(atmosphere.broadcast, "/quiet", "after")
        assert again.next() == "after"
        again.close()
        proxy.stop()


def test_what_the_history_no_longer_holds_is_announced(live, recorder):
    server, atmosphere, _ = served(live, recorder, ATMOSPHERE_HISTORY_MAX_MESSAGES=5)
    again = websocket_back_after_a_silent_drop(server, atmosphere)
    assert [again.recv() for _ in range(5)] == SENT[35:]  # what the history still held
    recorder.wait_for(lambda items: any(isinstance(e, MessagesLost) for _, e in items))
    assert [e for e in events_of(recorder, again.uuid) if isinstance(e, MessagesLost)] == \
        [MessagesLost(15, "/quiet", "history")]
    assert server.call(atmosphere.stats)["messages_lost"] == 15
