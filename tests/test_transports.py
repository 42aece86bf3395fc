"""The HTTP transports against a real server: long-polling, JSONP, streaming
and SSE, with the handshake, framing, heartbeats and nothing lost."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gevent
import gevent.event
import pytest
import requests

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from http_clients import Decoder, PollClient, StreamClient, params
from test_websocket import events_of, make_app
from flask_atmosphere import (ClientDisconnected, Connected, Disconnected, JsonMessage,
                              TextMessage)
from flask_atmosphere.connection import Carrier
from flask_atmosphere.mailbox import Mailbox, Outbound
from flask_atmosphere.transports import longpolling
from flask_atmosphere.transports.streaming import pump


@pytest.fixture
def chat(live, recorder):
    """(server, atmosphere, base url) for the recording test app."""
    def start(**config):
        app, atmosphere = make_app(recorder, **config)
        server = live(app)
        return server, atmosphere, f"http://127.0.0.1:{server.port}"
    return start


def greeting_of(messages):
    return json.loads(messages[0])["hello"]


# -- long-polling ------------------------------------------------------------

def test_long_polling_handshake_is_the_whole_first_response(chat):
    server, _, base = chat()
    response = requests.get(base + "/chat", params=params("long-polling"), timeout=TIMEOUT)
    assert response.status_code == 200
    uuid = response.text.split("|")[1]
    assert response.text == f"41|{uuid}|0|X|"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "no-cache" in response.headers["Cache-Control"]
    assert response.headers["X-Accel-Buffering"] == "no"


def test_long_polling_delivers_what_connected_sent_and_posts_go_upstream(chat, recorder):
    server, atmosphere, base = chat()
    client = PollClient(base, "/chat")
    assert greeting_of(client.poll()) == client.uuid  # queued in Connected, before the first poll
    assert client.post('{"a": 1}').status_code == 200
    assert client.poll() == ['{"json":{"a":1}}']
    assert [e for who, e in recorder.items if who == client.uuid][:2] == [Connected(), JsonMessage({"a": 1})]


def test_a_held_poll_sends_its_headers_at_once(chat):
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet")
    # stream=True returns as soon as the headers are in: with the poll still held.
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    assert held.status_code == 200
    atmosphere.broadcast("/quiet", "now")
    assert Decoder().feed(held.raw.read().decode()) == ["now"]


def test_a_long_poll_heartbeat_completes_the_response(chat):
    server, _, base = chat(ATMOSPHERE_HEARTBEAT_INTERVAL=0.2)
    client = PollClient(base, "/quiet")
    response = client.http.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert response.text == "1|X"


def test_three_long_poll_clients_get_100_broadcasts_once_and_in_order(chat):
    server, atmosphere, base = chat()
    clients = [PollClient(base, "/quiet") for _ in range(3)]
    expected = [f"m{i}" for i in range(100)]
    pollers = ThreadPoolExecutor(2)
    # Two keep polling while the broadcasts go out; the third is between polls
    # the whole time and polls only afterwards.
    running = [pollers.submit(client.poll_until, 100) for client in clients[:2]]
    for message in expected:
        atmosphere.broadcast("/quiet", message)
    assert [future.result(TIMEOUT) for future in running] == [expected, expected]
    assert clients[2].poll() == expected  # all of it, in one response
    atmosphere.broadcast("/quiet", "after")
    assert [client.poll() for client in clients] == [["after"]] * 3


def test_an_untracked_long_poll_client_gets_one_message_per_response(chat):
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet", track=False)
    atmosphere.broadcast("/quiet", "one")
    atmosphere.broadcast("/quiet", "two")
    assert client.poll() == ["one"]
    assert client.poll() == ["two"]


def test_concurrent_posts_are_answered_while_the_get_is_held(chat, recorder):
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet")
    with ThreadPoolExecutor(9) as pool:
        held = pool.submit(client.poll)
        posts = [pool.submit(client.post, f"p{i}") for i in range(8)]
        assert all(post.result(TIMEOUT).status_code == 200 for post in posts)
        assert not held.done()  # still held: the POSTs did not wait for it
        atmosphere.broadcast("/quiet", "release")
        assert held.result(TIMEOUT) == ["release"]
    texts = sorted(e.text for who, e in recorder.items if who == client.uuid and isinstance(e, TextMessage))
    assert texts == [f"p{i}" for i in range(8)]


def test_a_client_that_stops_polling_is_disconnected_after_the_grace_period(chat, recorder):
    server, _, base = chat(ATMOSPHERE_GRACE_PERIOD=0.3)
    client = PollClient(base, "/quiet")
    recorder.wait_for(lambda items: (client.uuid, Disconnected(ClientDisconnected())) in items)


def test_a_polling_client_keeps_one_grace_timer_and_is_still_disconnected(chat, recorder):
    server, atmosphere, base = chat(ATMOSPHERE_GRACE_PERIOD=0.3)
    client = PollClient(base, "/quiet")
    connection = server.call(atmosphere.registry.get, client.uuid)
    timers = []
    for i in range(3):  # each poll attaches, then detaches: the timer is restarted, not remade
        server.call(atmosphere.broadcast, "/quiet", f"m{i}")
        assert client.poll() == [f"m{i}"]
        timers.append(server.call(getattr, connection, "_grace_timer"))
    assert timers[0] is not None and all(timer is timers[0] for timer in timers)
    recorder.wait_for(lambda items: (client.uuid, Disconnected(ClientDisconnected())) in items)


def test_the_gaps_between_polls_do_not_add_up_to_the_grace_period(chat, recorder):
    # Each gap starts the whole grace period again: a client that is away
    # 0.15 s between polls five times (0.75 s in all) keeps its 0.4 s.
    server, atmosphere, base = chat(ATMOSPHERE_GRACE_PERIOD=0.4)
    client = PollClient(base, "/quiet")
    for i in range(5):
        time.sleep(0.15)  # away between two polls: the behaviour under test, not a wait
        server.call(atmosphere.broadcast, "/quiet", f"m{i}")
        assert client.poll() == [f"m{i}"]
    assert events_of(recorder, client.uuid) == [Connected()]
    assert server.call(atmosphere.registry.get, client.uuid) is not None


def test_the_close_request_ends_the_client_and_answers_its_held_poll(chat, recorder):
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.poll)
        server.wait_until(lambda: atmosphere.registry.get(client.uuid).carrier is not None)
        assert client.close().status_code == 200
        assert held.result(TIMEOUT) == []
    assert events_of(recorder, client.uuid) == [Connected(), Disconnected(ClientDisconnected())]


def test_jsonp(chat):
    server, atmosphere, base = chat(ATMOSPHERE_TRANSPORTS=["long-polling", "jsonp"])
    query = params("jsonp") | {"jsonpTransport": "atmosphere1795986232470"}
    script = requests.Session()  # <script> tags of the page: Fetch Metadata, cookies
    script.headers["Sec-Fetch-Site"] = "same-origin"
    first = script.get(base + "/quiet", params=query, timeout=TIMEOUT)
    assert first.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert first.text.startswith('atmosphere1795986232470({"message" : "41|')
    uuid = first.text.split("|")[1]
    atmosphere.broadcast("/quiet", 'x"y\u2028z')
    query["X-Atmosphere-tracking-id"] = uuid
    poll = script.get(base + "/quiet", params=query, timeout=TIMEOUT)
    assert poll.text == 'atmosphere1795986232470({"message" : "5|x\\"y\\u2028z"});'
    # A JSONP push: the message rides in the query.
    push = script.get(base + "/chat", params=params("jsonp", uuid) | {"X-Atmosphere-Post-Body": "hi"},
                      timeout=TIMEOUT)
    assert push.status_code == 200


# -- streaming and SSE -----------------------------------------------------------

@pytest.mark.parametrize("transport", ["streaming", "sse"])
def test_streams_handshake_greeting_and_broadcasts(chat, transport):
    server, atmosphere, base = chat()
    stream = StreamClient(base, "/chat", transport)
    assert greeting_of([stream.next()]) == stream.uuid
    content_type = stream.response.headers["Content-Type"]
    assert content_type == ("text/event-stream; charset=utf-8" if transport == "sse"
                            else "text/plain; charset=utf-8")
    stream.post("echo me")
    assert stream.next() == "echo me"
    atmosphere.broadcast("/chat", {"b": 1})
    assert stream.next() == '{"b":1}'


def test_sse_events_carry_ids_and_multiline_data(chat):
    server, atmosphere, base = chat()
    stream = StreamClient(base, "/quiet", "sse")
    atmosphere.broadcast("/quiet", "line 1\r\nline 2\nline 3")
    assert stream.next() == "line 1\nline 2\nline 3"  # EventSource joins data lines with LF
    atmosphere.broadcast("/quiet", "next")
    assert stream.next() == "next"
    assert stream.event_ids == ["1", "2"]


def test_sse_resumes_after_last_event_id(chat):
    server, atmosphere, base = chat()
    first = StreamClient(base, "/quiet", "sse")
    for message in ("a", "b", "c"):
        atmosphere.broadcast("/quiet", message)
    assert first.take(3) == ["a", "b", "c"]
    first.close()
    # The browser's own reconnect says it saw "a" only: "b" and "c" come again.
    again = StreamClient(base, "/quiet", "sse", tracking_id=first.uuid, http=first.http,
                         headers={"Last-Event-ID": first.event_ids[0]})
    assert again.next().split("|")[0] == first.uuid  # 5.x gets the handshake again (§2.7)
    assert again.take(2) == ["b", "c"]


@pytest.mark.parametrize("framework, resent", [("5.0.7", True), ("2.3.8-javascript", False)])
def test_the_handshake_is_resent_on_reconnect_only_to_5x(chat, framework, resent):
    server, atmosphere, base = chat()
    first = StreamClient(base, "/quiet", framework=framework)
    first.close()
    again = StreamClient(base, "/quiet", tracking_id=first.uuid, framework=framework,
                         http=first.http)
    atmosphere.broadcast("/quiet", "after")
    first_message = again.next()
    assert (first_message == f"{first.uuid}|0|X|") is resent
    if resent:
        assert again.next() == "after"
    else:
        assert first_message == "after"


def test_a_stream_reconnect_within_the_grace_period_keeps_the_client(chat, recorder):
    server, atmosphere, base = chat()
    first = StreamClient(base, "/quiet")
    first.close()
    # Seen gone (the stream's socket closed); messages wait in its mailbox.
    server.wait_until(lambda: atmosphere.registry.get(first.uuid).carrier is None)
    for message in ("while away 1", "while away 2"):
        atmosphere.broadcast("/quiet", message)
    again = StreamClient(base, "/quiet", tracking_id=first.uuid, http=first.http)
    assert again.take(3)[1:] == ["while away 1", "while away 2"]
    assert events_of(recorder, first.uuid) == [Connected()]  # no second Connected, no Disconnected


def test_a_websocket_reconnect_within_the_grace_period_gets_what_was_sent_meanwhile(chat, recorder):
    server, atmosphere, base = chat()
    first = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    first.ws.shutdown()  # the network drops: no close frame
    server.wait_until(lambda: atmosphere.registry.get(first.uuid).carrier is None)
    atmosphere.broadcast("/quiet", "meanwhile")
    query = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-tracking-id": first.uuid})
    again = WSClient(server.url("/quiet", **query), track=True, protocol=True,
                     cookie=first.cookie)
    assert again.uuid == first.uuid
    assert again.recv() == "meanwhile"
    assert events_of(recorder, first.uuid) == [Connected()]


# -- every transport -------------------------------------------------------------

UNICODE = "Кириллица, 漢字かな, emoji 😀👍🏽, separators \u2028\u2029, é€"


@pytest.mark.parametrize("transport", ["websocket", "long-polling", "streaming", "sse"])
@pytest.mark.parametrize("track", [True, False])
def test_multibyte_payloads_survive_every_transport(chat, transport, track):
    server, atmosphere, base = chat()
    if transport == "websocket":
        query = dict(ATMOSPHERE_PARAMS, **{"X-Atmosphere-TrackMessageSize": str(track).lower()})
        client = WSClient(server.url("/quiet", **query), track=track, protocol=True)
        receive = client.recv
    elif transport == "long-polling":
        client = PollClient(base, "/quiet", track=track)
        polled: list[str] = []

        def receive():
            while not polled:
                polled.extend(client.poll())
            return polled.pop(0)
    else:
        client = StreamClient(base, "/quiet", transport, track=track)
        receive = client.next
    for _ in range(2):  # a batch of two where the transport batches
        atmosphere.broadcast("/quiet", UNICODE)
    assert receive() == UNICODE
    assert receive() == UNICODE


def test_mixed_clients_get_500_broadcasts_small_and_large_in_order(chat):
    server, atmosphere, base = chat()
    ws = WSClient(server.url("/quiet", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    poll = PollClient(base, "/quiet")
    stream = StreamClient(base, "/quiet", "streaming")
    sse = StreamClient(base, "/quiet", "sse")
    big = "ж" * 10_000  # 20 KB of UTF-8
    expected = [f"{i}:" + (big if i % 2 else "small") for i in range(500)]
    with ThreadPoolExecutor(1) as pool:
        polled = pool.submit(poll.poll_until, 500)
        for message in expected:
            atmosphere.broadcast("/quiet", message)
        assert [ws.recv() for _ in range(500)] == expected
        assert stream.take(500) == expected
        assert sse.take(500) == expected
        assert polled.result(TIMEOUT) == expected


# -- bad input ---------------------------------------------------------------------

def test_an_unknown_tracking_id_gets_a_fresh_client_not_an_error(chat, recorder):
    server, _, base = chat()
    response = requests.get(base + "/chat", params=params("long-polling", "no-such-client"),
                            timeout=TIMEOUT)
    assert response.status_code == 200 and greeting_of(Decoder().feed(response.text)) == "no-such-client"


def test_an_oversize_post_gets_413_and_the_client_stays(chat, recorder):
    server, atmosphere, base = chat(ATMOSPHERE_MAX_MESSAGE_SIZE=100)
    client = PollClient(base, "/quiet")
    response = client.post("x" * 101)
    assert response.status_code == 413
    assert client.post("x" * 100).status_code == 200
    atmosphere.broadcast("/quiet", "still here")
    assert client.poll() == ["still here"]


@pytest.mark.parametrize("query", [
    {"X-Atmosphere-Transport": "carrier-pigeon"},
    {"X-Atmosphere-Transport": "long-polling", "X-Heartbeat-Server": "soon"},
])
def test_malformed_parameters_get_400_with_a_one_line_reason(chat, query):
    server, _, base = chat()
    response = requests.get(base + "/chat", params=query, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.text.count("\n") == 1 and response.headers["X-Atmosphere-error"]


def test_a_websocket_request_without_upgrade_gets_501(chat):
    server, _, base = chat()
    response = requests.get(base + "/chat", params=params("websocket"), timeout=TIMEOUT)
    assert response.status_code == 501
    assert response.headers["X-Atmosphere-error"] == "Websocket protocol not supported"


def test_a_client_older_than_2_2_1_gets_501(chat):
    server, _, base = chat()
    response = requests.get(base + "/chat", params=params("long-polling", framework="2.2.0-jquery"),
                            timeout=TIMEOUT)
    assert response.status_code == 501


def test_transports_can_be_refused_by_config(chat):
    server, _, base = chat(ATMOSPHERE_TRANSPORTS=["long-polling"])
    refused = requests.get(base + "/chat", params=params("sse"), timeout=TIMEOUT)
    assert refused.status_code == 501
    # A WebSocket upgrade is answered with 501 instead of 101: clients fall back.
    import websocket
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.url("/chat", **ATMOSPHERE_PARAMS), timeout=TIMEOUT)
    assert info.value.status_code == 501
    assert PollClient(base, "/chat").uuid


def test_a_woken_long_poll_takes_what_comes_while_the_server_is_busy(chat):
    # A long cap: the answer goes once the server has nothing else to do,
    # not after the cap (the read below would time out first).
    server, atmosphere, base = chat(ATMOSPHERE_LONG_POLL_BATCH_WAIT=3 * TIMEOUT)
    client = PollClient(base, "/quiet")
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)

    def burst():  # on the hub: the poll wakes, and the hub is busy meanwhile
        atmosphere.broadcast("/quiet", "first")
        for _ in range(10):
            gevent.sleep(0)
        atmosphere.broadcast("/quiet", "second")
    server.call(burst)
    assert Decoder().feed(held.raw.read().decode()) == ["first", "second"]


def test_a_woken_long_poll_on_a_server_that_never_idles_answers_after_the_batch_wait(chat):
    server, atmosphere, base = chat(ATMOSPHERE_LONG_POLL_BATCH_WAIT=0.05)
    client = PollClient(base, "/quiet")
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    answered = threading.Event()

    def spin():  # keeps the hub from ever being idle until the answer is read
        while not answered.is_set():
            time.sleep(0.001)  # a busy server's work, letting this thread's client run
            gevent.sleep(0)
    server.loop.run_callback_threadsafe(gevent.spawn, spin)
    try:
        atmosphere.broadcast("/quiet", "first")
        assert Decoder().feed(held.raw.read().decode()) == ["first"]
    finally:
        answered.set()


def test_a_poll_that_takes_over_from_one_waiting_for_more_gets_the_messages_at_once(
        chat, monkeypatch):
    # Poll A is woken and waits for more (held here until the test lets it
    # go); the client's poll B takes over meanwhile: B gets the message at
    # once, A an empty answer, and nothing waits for A or for a heartbeat.
    server, atmosphere, base = chat()
    settling, gate = [], server.call(gevent.event.Event)
    monkeypatch.setattr(longpolling.Poll, "_settle",
                        lambda poll: settling.append(poll) or gate.wait())
    client = PollClient(base, "/quiet")
    first = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    atmosphere.broadcast("/quiet", "m0")
    server.wait_until(lambda: settling)  # A is waiting for more
    taking_over = requests.Session()  # another connection, as a browser's next poll
    taking_over.cookies.update(client.http.cookies)
    response = taking_over.get(client.url, params=client.query(), timeout=TIMEOUT)
    assert Decoder().feed(response.text) == ["m0"]
    server.call(gate.set)
    assert first.raw.read() == b""  # A: superseded, an empty answer
    atmosphere.broadcast("/quiet", "m1")
    assert client.poll() == ["m1"]


def test_messages_put_back_by_a_superseded_request_wake_the_one_serving_now(chat):
    # A WebSocket's writer that took a batch and finds another request took
    # the client over puts it back: the request serving now must write it.
    server, atmosphere, base = chat()
    connection = atmosphere.registry.get(PollClient(base, "/quiet").uuid)

    def scenario():
        atmosphere.broadcast("/quiet", "m0")
        atmosphere.broadcaster.flush()
        batch = connection.mailbox.take(0)  # by a request then superseded by this one:
        woken = []
        carrier = Carrier(wake=lambda: woken.append(len(connection.mailbox)))
        connection.attach(carrier)
        del woken[:]
        connection.requeue(batch)
        connection.detach(carrier)
        return woken
    assert server.call(scenario) == [1]


def test_only_a_clients_first_poll_sends_its_headers_before_its_answer(chat):
    # §2.5: a client's open fires on the headers of its first poll after the
    # handshake; later polls send headers and answer together, with a length.
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet")
    first = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    assert first.headers["Transfer-Encoding"] == "chunked"  # headers out, nothing to say yet
    connection = atmosphere.registry.get(client.uuid)
    first_carrier = connection.carrier
    atmosphere.broadcast("/quiet", "one")
    assert Decoder().feed(first.raw.read().decode()) == ["one"]
    with ThreadPoolExecutor(1) as pool:  # requests returns once the headers come
        later = pool.submit(client.http.get, client.url, params=client.query(), timeout=TIMEOUT)
        server.wait_until(lambda: connection.carrier not in (None, first_carrier))  # held
        atmosphere.broadcast("/quiet", "two")
        response = later.result(TIMEOUT)
    assert "Transfer-Encoding" not in response.headers
    assert response.headers["Content-Length"] == str(len(response.content))
    assert Decoder().feed(response.text) == ["two"]


def test_a_poller_without_the_framework_parameter_is_resumed_by_its_tracking_id(chat, recorder):
    # X-atmo-protocol and the tracking id suffice, as the README's parameters
    # show; each poll on a new TCP connection.
    server, atmosphere, base = chat()
    query = {"X-Atmosphere-Transport": "long-polling", "X-atmo-protocol": "true",
             "X-Atmosphere-TrackMessageSize": "true", "X-Atmosphere-tracking-id": "0"}
    first = requests.get(base + "/quiet", params=query, timeout=TIMEOUT)
    uuid = first.text.split("|")[1]
    query["X-Atmosphere-tracking-id"] = uuid
    atmosphere.broadcast("/quiet", "between polls")
    answer = requests.get(base + "/quiet", params=query, cookies=first.cookies,
                          timeout=TIMEOUT).text
    assert Decoder().feed(answer) == ["between polls"]
    assert events_of(recorder, uuid) == [Connected()]


def test_a_superseded_stream_stops_between_two_messages_and_puts_the_rest_back():
    # The newer request waits for the batch this one is writing: it waits
    # for one write, not for the whole batch.
    class Client:
        def __init__(self):
            self.mailbox = Mailbox(10, 1 << 20)
            self.serving = True

        def serves(self, carrier):
            return self.serving

        def requeue(self, batch):
            self.mailbox.requeue(batch)

    client = Client()
    for text in ("one", "two", "three"):
        client.mailbox.put(Outbound(text))
    written = []

    def write(data):
        written.append(data)
        client.serving = False  # a newer request arrives during the first write

    pump(client, None, write, lambda seq, o: o.data, b"X", None)
    assert written == [b"one"]
    assert [o.text for _, o in client.mailbox.take(0)] == ["two", "three"]


def test_a_poll_behind_a_batch_still_going_out_is_held_and_notices_its_client_leave(chat):
    # An earlier request of the client is still writing a batch: the new poll
    # waits for it as a held poll does, watching its connection meanwhile.
    server, atmosphere, base = chat()
    client = PollClient(base, "/quiet")
    connection = atmosphere.registry.get(client.uuid)

    def earlier_batch_going_out():
        atmosphere.broadcast("/quiet", "m0")
        atmosphere.broadcaster.flush()
        batch = connection.mailbox.take(0)
        atmosphere.broadcast("/quiet", "m1")
        atmosphere.broadcaster.flush()
        return batch
    batch = server.call(earlier_batch_going_out)
    held = client.http.get(client.url, params=client.query(), stream=True, timeout=TIMEOUT)
    carrier = server.call(lambda: connection.carrier)
    held.close()
    client.http.close()
    server.wait_until(lambda: carrier.lost)
    server.call(connection.requeue, batch)  # the earlier write failed
    assert client.poll() == ["m0", "m1"]
