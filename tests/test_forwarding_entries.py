"""The wire format of the streams between processes (``backplane/forwarding.py``):
a writer's burst for a stream is one entry; a reader takes entries of one
message or of several, and skips what is malformed, saying so."""
from __future__ import annotations

import json
import logging

from hypothesis import given, strategies as st

from flask_atmosphere.backplane.forwarding import batches, entry_messages


def xadd(stream: str, message: dict) -> tuple[str, str, str]:
    return ("xadd", stream, json.dumps(message))


def test_the_messages_for_a_stream_are_one_entry_in_order():
    commands = [xadd("a", {"n": 1}), xadd("b", {"n": 2}), xadd("a", {"n": 3})]
    assert list(batches(commands)) == [
        ("xadd", "a", '[{"n": 1},{"n": 3}]'), ("xadd", "b", '{"n": 2}')]


def test_a_directory_write_stays_between_the_messages_around_it():
    claim, release = ("set", "k", "{}", 1000), ("del", "k")
    commands = [xadd("a", {"n": 1}), claim, xadd("a", {"n": 2}), xadd("a", {"n": 3}), release]
    assert list(batches(commands)) == [
        ("xadd", "a", '{"n": 1}'), claim, ("xadd", "a", '[{"n": 2},{"n": 3}]'), release]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "set"]), st.integers())))
def test_each_stream_reads_its_messages_in_order_between_the_same_directory_writes(sent):
    commands = [("set", "k", str(n), 1) if where == "set" else xadd(where, {"n": n})
                for where, n in sent]
    # (message, how many directory writes went before it), per stream
    expected: dict[str, list] = {"a": [], "b": []}
    for k, (where, n) in enumerate(sent):
        if where != "set":
            expected[where].append((n, sum(w == "set" for w, _ in sent[:k])))
    read: dict[str, list] = {"a": [], "b": []}
    sets = 0
    for command in batches(commands):
        if command[0] == "xadd":
            read[command[1]] += [(m["n"], sets)
                                 for m in entry_messages({b"m": command[2].encode()})]
        else:
            sets += 1
    assert read == expected


def test_a_malformed_entry_or_message_is_skipped_and_said(caplog):
    caplog.set_level(logging.WARNING, "flask_atmosphere.backplane")
    assert entry_messages({b"m": b'{"n": 1}'}) == [{"n": 1}]
    assert entry_messages({b"m": b"not json"}) == []
    assert entry_messages({b"x": b"{}"}) == []
    assert entry_messages({b"m": b'[{"n": 1}, 2, {"n": 3}]'}) == [{"n": 1}, {"n": 3}]
    assert entry_messages({b"m": b"7"}) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4
    assert "1 malformed forwarded messages were skipped" in warnings[2]
