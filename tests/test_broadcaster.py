"""The broadcaster: coalesced fan-out, one write per client, order kept.

These drive ``Broadcaster`` and ``fan_out`` with stand-in connections (no
sockets): what each client's transport is asked to write, and in what order.
"""
import gevent
import pytest

from flask_atmosphere import Everyone, OnlySelf, SkipSelf
from flask_atmosphere.backplane import MemoryBackplane
from flask_atmosphere.filters import as_filter
from flask_atmosphere.broadcaster import (MAX_COALESCED, MAX_COALESCED_BYTES, Broadcast,
                                          Broadcaster, fan_out)
from flask_atmosphere.registry import Registry
from flask_atmosphere.transports.wsframes import FRAMING
from flask_atmosphere.wire import JsonWireFormat, TextWireFormat

TEXT = TextWireFormat()


class Client:
    def __init__(self, uuid, admin=False):
        self.uuid = uuid
        self.admin = admin


class FakeConnection:
    """What ``fan_out`` reads of a connection; ``writes`` has what the
    transport was asked to write at once, ``queued`` what went to the mailbox."""

    def __init__(self, uuid, path="/chat", direct=True, accepts=True, wire_format=TEXT,
                 track=False):
        self.uuid = uuid
        self.path = path
        self.client = Client(uuid, admin=uuid.startswith("admin"))
        self.wire_format = wire_format
        self.framing = FRAMING[track]
        self.writes: list[bytes] = []
        self.queued: list[str] = []
        self.accepts = accepts
        self.direct = self if direct else None
        self.keeps = False

    def write_now(self, data):
        if self.accepts:
            self.writes.append(data)
        return self.accepts

    def enqueue(self, outbound):
        self.queued.append(outbound.text)

    def texts(self, track=False):
        """The messages of every write, decoded from their frames."""
        found = []
        for data in self.writes:
            while data:
                length, header = data[1] & 0x7F, 2
                if length == 126:
                    length, header = int.from_bytes(data[2:4], "big"), 4
                found.append(data[header:header + length].decode())
                data = data[header + length:]
        return found


def registry_of(*connections):
    registry = Registry()
    for connection in connections:
        registry.add(connection)
    return registry


def test_a_batch_goes_out_in_one_write_per_client_with_the_same_bytes():
    a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
    fan_out(registry_of(a, b, c), [Broadcast("/chat", f"m{i}", Everyone) for i in range(3)])
    assert [len(x.writes) for x in (a, b, c)] == [1, 1, 1]
    assert a.texts() == b.texts() == c.texts() == ["m0", "m1", "m2"]
    assert a.writes[0] is b.writes[0] is c.writes[0]  # framed once, shared


def test_skip_self_leaves_each_sender_out_of_its_own_messages():
    a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
    batch = [Broadcast("/chat", "from a", SkipSelf, sender="a", exact=True),
             Broadcast("/chat", "from b", SkipSelf, sender="b", exact=True),
             Broadcast("/chat", "to all", Everyone, exact=True)]
    fan_out(registry_of(a, b, c), batch)
    assert a.texts() == ["from b", "to all"]
    assert b.texts() == ["from a", "to all"]
    assert c.texts() == ["from a", "from b", "to all"]


def test_everyone_and_skip_self_from_redis_take_the_fast_path(monkeypatch):
    """A broadcast that crossed the Redis backplane (encoded, decoded) has
    the very ``Everyone``/``SkipSelf`` singletons: no filter call per client."""
    from flask_atmosphere.backplane.envelope import decode, encode
    a, b = FakeConnection("a"), FakeConnection("b")
    crossed = [decode(encode(f"id-{n}", Broadcast("/chat", f"m{n}", to, sender="a"))).broadcast
               for n, to in enumerate([Everyone, SkipSelf])]
    assert crossed[0].to is Everyone and crossed[1].to is SkipSelf

    calls = []
    for simple in (Everyone, SkipSelf):
        original = type(simple).allows

        def counted(self, client, sender, original=original):
            calls.append(client.uuid)
            return original(self, client, sender)
        monkeypatch.setattr(type(simple), "allows", counted)
    assert fan_out(registry_of(a, b), crossed) == 3
    assert set(calls) <= {"a"}  # only a sender of a SkipSelf broadcast is looked at
    assert a.texts() == ["m0"] and b.texts() == ["m0", "m1"]


def test_filters_only_self_and_predicates_per_client():
    a, admin = FakeConnection("a"), FakeConnection("admin-1")
    batch = [Broadcast("/chat", "yours", OnlySelf, sender="a", exact=True),
             Broadcast("/chat", "admins", SkipSelf & (lambda client: client.admin), sender="a"),
             Broadcast("/chat", "nobody", OnlySelf)]
    fan_out(registry_of(a, admin), batch)
    assert a.texts() == ["yours"]
    assert admin.texts() == ["admins"]


def test_a_client_that_cannot_take_a_write_gets_each_message_queued_in_order():
    busy = FakeConnection("busy", accepts=False)
    poller = FakeConnection("poller", direct=False)
    fan_out(registry_of(busy, poller), [Broadcast("/chat", f"m{i}", Everyone) for i in range(3)])
    assert busy.queued == poller.queued == ["m0", "m1", "m2"]
    assert busy.writes == []


def test_track_message_size_and_wire_formats_are_framed_apart():
    plain = FakeConnection("plain")
    tracked = FakeConnection("tracked", track=True)
    json = FakeConnection("json", wire_format=JsonWireFormat())
    fan_out(registry_of(plain, tracked, json), [Broadcast("/chat", {"n": 1}, Everyone)])
    assert plain.texts() == []  # the text format renders only str: logged, skipped
    assert json.texts() == ['{"n":1}']
    fan_out(registry_of(plain, tracked), [Broadcast("/chat", "hé", Everyone)])
    assert plain.texts() == ["hé"] and tracked.texts() == ["2|hé"]


def test_a_failing_filter_or_render_skips_only_what_it_concerns(caplog):
    a, b = FakeConnection("a"), FakeConnection("b")

    def picky(client):
        if client.uuid == "a":
            raise RuntimeError("boom")
        return True

    fan_out(registry_of(a, b), [Broadcast("/chat", "picky", as_filter(picky)),
                                Broadcast("/chat", object(), Everyone),
                                Broadcast("/chat", "plain", Everyone)])
    assert a.texts() == ["plain"]
    assert b.texts() == ["picky", "plain"]
    assert "boom" in caplog.text and "cannot render" in caplog.text


def test_prefix_broadcasts_and_exact_ones_reach_their_own_clients():
    room = FakeConnection("r", path="/rooms/blue")
    lobby = FakeConnection("l", path="/rooms")
    fan_out(registry_of(room, lobby), [Broadcast("/rooms", "all rooms", Everyone)])
    fan_out(registry_of(room, lobby), [Broadcast("/rooms", "lobby", Everyone, exact=True)])
    assert room.texts() == ["all rooms"]
    assert lobby.texts() == ["all rooms", "lobby"]


def test_broadcasts_pile_up_until_the_hub_runs_then_go_out_together():
    connection = FakeConnection("a")
    broadcaster = Broadcaster(registry_of(connection), MemoryBackplane())
    broadcaster.attach(gevent.get_hub(), replace=True)
    try:
        for i in range(MAX_COALESCED - 1):
            broadcaster.publish(Broadcast("/chat", f"m{i}", Everyone))
        assert connection.writes == []  # not before this greenlet yields
        gevent.sleep(0)
        assert len(connection.writes) == 1
        assert connection.texts() == [f"m{i}" for i in range(MAX_COALESCED - 1)]
    finally:
        broadcaster.detach(gevent.get_hub())


def test_a_publisher_that_never_yields_sends_a_full_batch_at_once():
    # So that the mailboxes it fills show (for back-pressure) before it is done.
    connection = FakeConnection("a")
    broadcaster = Broadcaster(registry_of(connection), MemoryBackplane())
    broadcaster.attach(gevent.get_hub(), replace=True)
    try:
        for i in range(MAX_COALESCED + 2):
            broadcaster.publish(Broadcast("/chat", f"m{i}", Everyone))
        assert len(connection.writes) == 1  # one full batch, fanned out in this greenlet
        gevent.sleep(0)
        assert len(connection.writes) == 2  # the rest when it yields
        assert connection.texts() == [f"m{i}" for i in range(MAX_COALESCED + 2)]
    finally:
        broadcaster.detach(gevent.get_hub())


def test_big_messages_are_coalesced_only_up_to_a_size():
    connection = FakeConnection("a")
    broadcaster = Broadcaster(registry_of(connection), MemoryBackplane())
    broadcaster.attach(gevent.get_hub(), replace=True)
    big = "x" * (MAX_COALESCED_BYTES * 2 // 3)
    try:
        for _ in range(3):
            broadcaster.publish(Broadcast("/chat", big, Everyone))
        gevent.sleep(0)
        assert [len(data) // len(big) for data in connection.writes] == [2, 1]
    finally:
        broadcaster.detach(gevent.get_hub())


def test_calls_keep_their_place_behind_pending_broadcasts():
    connection = FakeConnection("a")
    broadcaster = Broadcaster(registry_of(connection), MemoryBackplane())
    broadcaster.attach(gevent.get_hub(), replace=True)
    seen = []
    try:
        broadcaster.call(seen.append, "before")  # nothing pending: at once
        assert seen == ["before"]
        broadcaster.publish(Broadcast("/chat", "m", Everyone))
        broadcaster.call(lambda: seen.append(connection.texts()))
        assert seen == ["before"]
        gevent.sleep(0)
        assert seen == ["before", ["m"]]
    finally:
        broadcaster.detach(gevent.get_hub())


def test_without_a_hub_everything_runs_at_once():
    connection = FakeConnection("a")
    broadcaster = Broadcaster(registry_of(connection), MemoryBackplane())
    broadcaster.publish(Broadcast("/chat", "m", Everyone))
    assert connection.texts() == ["m"]


@pytest.mark.parametrize("size", [125, 126, 70000])
def test_framing_lengths(size):
    connection = FakeConnection("a")
    fan_out(registry_of(connection), [Broadcast("/chat", "x" * size, Everyone)])
    data = connection.writes[0]
    assert data[0] == 0x81 and data.endswith(b"x" * size)
