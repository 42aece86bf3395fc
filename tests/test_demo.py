"""The demo chat's rules, over real WebSockets."""
import json

from conftest import ATMOSPHERE_PARAMS, WSClient
from demo import create_app
from demo.chat import atmosphere
from flask_atmosphere import MessagesLost


def join(server, name=None):
    params = ATMOSPHERE_PARAMS | ({"name": name} if name is not None else {})
    client = WSClient(server.url("/the-chat", **params), track=True, protocol=True)
    joined = client.recv_json()
    assert (joined["author"], joined["message"], joined["event"]) == (
        name or "Someone", "joined the room", "joined")
    return client


def test_chat(live):
    server = live(create_app())
    ada = join(server, "ada")
    bob = join(server, "bob")
    arrival = ada.recv_json()  # bob's, seen by ada
    assert (arrival["author"], arrival["message"], arrival["event"]) == (
        "bob", "joined the room", "joined")

    bob.send(json.dumps({"author": "bob", "message": "hi <b>ada</b> 👋"}))
    line = ada.recv_json()
    assert line["author"] == "bob" and line["message"] == "hi <b>ada</b> 👋"
    assert line["time"].isdigit() and len(line["time"]) >= 13  # ms since the epoch, as a string

    bob.send("not json")
    # The next thing bob reads is the answer: his own message was not echoed.
    system = bob.recv_json()
    assert (system["author"], system["message"]) == ("system", "Only json is allowed")
    bob.close()
    left = ada.recv_json()
    assert (left["author"], left["message"], left["event"]) == ("bob", "has left the room", "left")


def test_a_name_is_trimmed_and_cut_to_40_characters_and_none_is_someone(live):
    server = live(create_app())
    ada = join(server)  # no name: "Someone joined the room"
    long = WSClient(server.url("/the-chat", **ATMOSPHERE_PARAMS, name="  " + "x" * 50 + " "),
                    track=True, protocol=True)
    for client in (ada, long):
        assert client.recv_json()["author"] == "x" * 40
    blank = WSClient(server.url("/the-chat", **ATMOSPHERE_PARAMS, name="   "), track=True,
                     protocol=True)
    assert blank.recv_json()["author"] == "Someone"


def test_the_page_and_the_client_script_are_served(live):
    app = create_app()
    http = app.test_client()
    page = http.get("/")
    assert page.status_code == 200 and b"atmosphere-client.js" in page.data
    script = http.get("/_atmosphere/atmosphere-client.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")


def test_a_participant_is_told_that_messages_did_not_reach_it():
    """What ``MessagesLost`` says (a full mailbox, a process that died
    before its checkpoint) shows in the chat as a system line."""
    app = create_app()
    with atmosphere.test_client("/the-chat?name=ada", app=app) as ada:
        assert ada.receive_json(timeout=5)["event"] == "joined"
        ada.app_client.receive(MessagesLost(3, "/the-chat", "overflow"))
        ada.app_client.receive(MessagesLost(None, "/the-chat", "takeover"))
        lines = [ada.receive_json(timeout=5) for _ in range(2)]
    assert [(line["author"], line["message"]) for line in lines] == [
        ("system", "3 message(s) did not reach you (overflow)"),
        ("system", "Some messages did not reach you (takeover)")]
