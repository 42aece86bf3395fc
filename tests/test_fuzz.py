"""Fuzzing the parsers with hypothesis: any input gives a result or a clean
protocol error, never an unhandled exception."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_atmosphere.events import JsonMessage, TextMessage
from flask_atmosphere.protocol import AtmosphereParams, ProtocolError, parse_params
from flask_atmosphere.transports.wsframes import Close, FrameRefused, InboundFrames, Message, Ping
from flask_atmosphere.wire import JsonWireFormat

NAMES = st.sampled_from(["X-Atmosphere-tracking-id", "X-Atmosphere-Framework",
                         "X-Atmosphere-Transport", "X-Atmosphere-TrackMessageSize",
                         "X-Heartbeat-Server", "X-atmo-protocol", "Content-Type", "_",
                         "x-atmosphere-transport", "room"]) | st.text(max_size=20)


@given(st.dictionaries(NAMES, st.text(max_size=40)), st.dictionaries(NAMES, st.text(max_size=40)))
def test_parse_params_gives_params_or_a_protocol_error(query, headers):
    try:
        params = parse_params(query, headers)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(params, AtmosphereParams)
        params.framework_version  # never raises either


@given(st.text())
def test_the_json_wire_format_reads_anything(text):
    assert isinstance(JsonWireFormat().parse(text), (TextMessage, JsonMessage))


def test_deeply_nested_json_is_text_not_a_crash():
    assert isinstance(JsonWireFormat().parse("[" * 100_000), TextMessage)


def frame_bytes():
    """Mostly well-formed frames (masked, any opcode, odd flags), glued together."""
    header = st.builds(lambda fin, rsv, op, mask, length: bytes([
        (0x80 if fin else 0) | (rsv << 4) | op, 0x80 * mask | length]),
        st.booleans(), st.integers(0, 7), st.integers(0, 15), st.integers(0, 1), st.integers(0, 127))
    frame = st.tuples(header, st.binary(max_size=4), st.binary(max_size=200)).map(lambda t: b"".join(t))
    return st.lists(frame, max_size=6).map(b"".join) | st.binary(max_size=300)


@settings(max_examples=500)
@given(frame_bytes(), st.integers(1, 50))
def test_the_frame_parser_gives_events_or_a_close_code_in_any_chunks(data, chunk):
    frames = InboundFrames(1000)
    for start in range(0, len(data), chunk):
        try:
            events = frames.receive(data[start:start + chunk])
        except FrameRefused as exc:
            assert exc.code in (1002, 1007, 1009)
            assert frames.receive(b"\x81\x80\x00\x00\x00\x00") == []  # nothing after
            return
        for event in events:
            assert isinstance(event, (Message, Ping, Close))


def test_a_reserved_opcode_with_a_huge_length_is_refused_before_reading():
    # Found by the fuzzer: opcode 3 announcing 2**63 bytes.
    with pytest.raises(FrameRefused) as refused:
        InboundFrames(1000).receive(b"\x03\x7f\x80\x00\x00\x00\x00\x00\x00\x00")
    assert refused.value.code == 1002


def test_an_announced_huge_message_is_refused_as_its_bytes_arrive():
    frames = InboundFrames(1000)
    header = b"\x81\xff" + (2**40).to_bytes(8, "big") + b"\x00\x00\x00\x00"
    assert frames.receive(header + b"x" * 600) == []  # within the limit so far
    with pytest.raises(FrameRefused) as refused:
        frames.receive(b"x" * 600)
    assert refused.value.code == 1009
