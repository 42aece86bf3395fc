"""Fuzzing the parsers with hypothesis: any input gives a result or a clean
protocol error, never an unhandled exception."""
import io
import types

from geventwebsocket.exceptions import WebSocketError
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_atmosphere.events import JsonMessage, TextMessage
from flask_atmosphere.protocol import AtmosphereParams, ProtocolError, parse_params
from flask_atmosphere.transports.geventws import FixedWebSocket, adopt
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


def websocket_over(data: bytes, limit: int = 1000) -> FixedWebSocket:
    """A WebSocket reading ``data`` (what a peer sent), writing nowhere."""
    stream = io.BytesIO(data)
    pipe = types.SimpleNamespace(read=stream.read, write=lambda _: None)
    from geventwebsocket.websocket import WebSocket
    handler = types.SimpleNamespace(socket=None)
    return adopt(WebSocket({}, pipe, handler), limit)


def frame_bytes():
    """Mostly well-formed frames (masked, any opcode, odd flags), glued together."""
    header = st.builds(lambda fin, rsv, op, mask, length: bytes([
        (0x80 if fin else 0) | (rsv << 4) | op, 0x80 * mask | length]),
        st.booleans(), st.integers(0, 7), st.integers(0, 15), st.integers(0, 1), st.integers(0, 127))
    frame = st.tuples(header, st.binary(max_size=4), st.binary(max_size=200)).map(lambda t: b"".join(t))
    return st.lists(frame, max_size=6).map(b"".join) | st.binary(max_size=300)


@settings(max_examples=500)
@given(frame_bytes())
def test_the_frame_reader_gives_messages_or_a_clean_error(data):
    ws = websocket_over(data)
    for _ in range(20):
        try:
            message = ws.read_message()
        except (WebSocketError, UnicodeError):  # ProtocolError and MessageTooBig among them
            return
        if message is None:  # a close frame
            return
        assert isinstance(message, (str, bytearray, bytes))


def test_a_reserved_opcode_with_a_huge_length_is_refused_before_reading():
    # Found by the fuzzer: opcode 3 announcing 2**63 bytes.
    ws = websocket_over(b"\x03\x7f\x80\x00\x00\x00\x00\x00\x00\x00")
    try:
        ws.read_message()
    except WebSocketError as exc:
        assert "reserved opcode" in str(exc)
    else:
        raise AssertionError("a reserved opcode must be refused")
