"""What crosses a backplane, sans-IO: a broadcast as plain data (an
*envelope*), and a publication as Redis carries it (an envelope with its
offset and its stream's epoch). Never pickle: an envelope is JSON, with a
format version, and whatever arrives is checked before anything uses it.

An envelope::

    {"v": 1, "id": "<origin>-<n>", "k": "b", "p": "/chat", "x": true,
     "m": <the message: a string, or JSON>, "t": <the client filter as data>,
     "s": "<the sender's uuid>" | null}

``k`` is ``"b"`` for a broadcast and ``"probe"`` for a backplane's probe of
its own subscription (nothing is delivered). ``id`` is unique per publication
(the publishing process's origin, and a counter): a process that receives one
twice (a publish retried after a lost answer) delivers it once.

A publication, as the publish script sends it on the channel::

    <stream entry id>:<epoch>:<envelope>

the entry id being ``<ms>-<offset>``: the offset counts the publications of
one shard (1, 2, 3, …), and the epoch names the stream's history: a new
epoch means Redis lost it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..broadcast import Broadcast
from ..filters import FilterError, from_data, to_data

__all__ = ["FORMAT_VERSION", "MAX_ENVELOPE", "EnvelopeError", "Envelope", "encode", "decode",
           "Publication", "parse_publication", "entry_offset"]

#: The envelope format this code writes and reads.
FORMAT_VERSION = 1

#: The largest envelope accepted from a backplane, in bytes: anything larger
#: is not one of ours (a process refuses to publish one either).
MAX_ENVELOPE = 16 * 1024 * 1024


class EnvelopeError(ValueError):
    """An envelope or a publication is malformed, of an unknown version,
    oversized, or names a filter this process did not register. It is
    logged and skipped, never delivered."""


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope.

    Attributes:
        id: unique per publication.
        broadcast: what to deliver, or ``None`` for a probe.
    """
    id: str
    broadcast: Broadcast | None


def encode(envelope_id: str, broadcast: Broadcast | None, max_size: int = MAX_ENVELOPE) -> bytes:
    """The envelope of ``broadcast`` (``None``: a probe).

    Raises:
        FilterError: its client filter is code, not data.
        TypeError: its message is neither a string nor JSON-able.
        EnvelopeError: it is larger than ``max_size`` bytes.
    """
    if broadcast is None:
        data: dict[str, Any] = {"v": FORMAT_VERSION, "id": envelope_id, "k": "probe"}
    else:
        data = {"v": FORMAT_VERSION, "id": envelope_id, "k": "b", "p": broadcast.path,
                "x": broadcast.exact, "m": broadcast.message, "t": to_data(broadcast.to),
                "s": broadcast.sender}
    try:
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode("utf-8", "surrogatepass")
    except ValueError as exc:  # NaN and the like
        raise TypeError(f"a broadcast's message must be JSON to cross processes: {exc}") from None
    if len(encoded) > max_size:
        raise EnvelopeError(f"a broadcast of {len(encoded)} bytes is larger than {max_size}")
    return encoded


def decode(data: bytes) -> Envelope:
    """The envelope in ``data``.

    Raises:
        EnvelopeError: ``data`` is not an envelope this process can use.
    """
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(f"an envelope of {len(data)} bytes")
    try:
        value = json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        raise EnvelopeError("an envelope that is not JSON") from None
    if not isinstance(value, dict):
        raise EnvelopeError("an envelope that is not a JSON object")
    if value.get("v") != FORMAT_VERSION:
        raise EnvelopeError(f"an envelope of format version {str(value.get('v'))[:20]!r}")
    envelope_id, kind = value.get("id"), value.get("k")
    if not isinstance(envelope_id, str):
        raise EnvelopeError("an envelope without an id")
    if kind == "probe":
        return Envelope(envelope_id, None)
    path, exact, sender = value.get("p"), value.get("x"), value.get("s")
    if kind != "b" or not isinstance(path, str) or not isinstance(exact, bool) \
            or not (sender is None or isinstance(sender, str)) or "m" not in value:
        raise EnvelopeError("a malformed broadcast envelope")
    try:
        to = from_data(value.get("t"))
    except FilterError as exc:
        raise EnvelopeError(str(exc)) from None
    return Envelope(envelope_id, Broadcast(path, value["m"], to, sender, exact))


@dataclass(frozen=True)
class Publication:
    """One publication as a shard's channel or stream carries it.

    Attributes:
        entry_id: its stream entry id, ``<ms>-<offset>``.
        offset: its place in the shard, from 1.
        epoch: the shard's epoch.
        envelope: the envelope's bytes (decode them with :func:`decode`).
    """
    entry_id: str
    offset: int
    epoch: str
    envelope: bytes


def entry_offset(entry_id: str) -> int:
    """The offset in a stream entry id ``<ms>-<offset>``.

    Raises:
        EnvelopeError: it is not such an id.
    """
    _, _, sequence = entry_id.partition("-")
    if not sequence.isdigit():
        raise EnvelopeError(f"a stream entry id {entry_id[:40]!r}")
    return int(sequence)


def parse_publication(payload: bytes) -> Publication:
    """A publication as the channel carries it: ``<entry id>:<epoch>:<envelope>``.

    Raises:
        EnvelopeError: it is not one.
    """
    head, sep, rest = payload.partition(b":")
    epoch, sep2, envelope = rest.partition(b":")
    if not sep or not sep2:
        raise EnvelopeError("a publication without its entry id and epoch")
    try:
        entry_id = head.decode("ascii")
        epoch_text = epoch.decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("a publication with a garbled header") from None
    return Publication(entry_id, entry_offset(entry_id), epoch_text, envelope)
