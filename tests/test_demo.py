"""The demo chat's rules, over real WebSockets."""
import json

from conftest import ATMOSPHERE_PARAMS, WSClient
from demo import create_app


def join(server):
    client = WSClient(server.url("/the-chat", **ATMOSPHERE_PARAMS), track=True, protocol=True)
    joined = client.recv_json()
    assert (joined["author"], joined["message"]) == ("Someone", "joined the room")
    return client


def test_chat(live):
    server = live(create_app())
    ada = join(server)
    bob = join(server)
    assert ada.recv_json()["message"] == "joined the room"  # bob's arrival, seen by ada

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
    assert (left["author"], left["message"]) == ("Someone", "has left the room")


def test_the_page_and_the_client_script_are_served(live):
    app = create_app()
    http = app.test_client()
    page = http.get("/")
    assert page.status_code == 200 and b"atmosphere-client.js" in page.data
    script = http.get("/_atmosphere/atmosphere-client.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
