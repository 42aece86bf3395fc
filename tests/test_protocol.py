"""The sans-IO protocol functions, without sockets."""
import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from flask_atmosphere.protocol import (ProtocolError, VersionNotSupported, frame, handshake,
                                       handshake_due, heartbeat_interval, is_heartbeat,
                                       parse_params, protocol_headers, utf16_len,
                                       valid_tracking_id)

FIVE_X = {  # the 5.x client's WebSocket upgrade query (§1.1, captured)
    "room": "a", "X-Atmosphere-tracking-id": "0", "X-Atmosphere-Framework": "5.0.7",
    "X-Atmosphere-Transport": "websocket", "X-Atmosphere-TrackMessageSize": "true",
    "X-Heartbeat-Server": "30", "Content-Type": "application/json", "X-atmo-protocol": "true",
    "X-Custom": "v 1",
}


def test_parses_the_5x_query():
    params = parse_params(FIVE_X)
    assert params.tracking_id == "0"
    assert params.transport == "websocket"
    assert params.track_message_size and params.protocol
    assert params.heartbeat_server == 30
    assert params.content_type == "application/json"
    assert params.framework_version == (5, 0, 7)
    assert params.is_atmosphere


def test_a_plain_request_has_no_atmosphere_params():
    params = parse_params({"room": "a"})
    assert not params.is_atmosphere and not params.protocol and not params.track_message_size
    assert params.tracking_id == "0" and params.transport is None


def test_a_real_header_wins_over_the_query():
    params = parse_params({"X-Atmosphere-Transport": "long-polling"},
                          {"X-Atmosphere-Transport": "streaming"})
    assert params.transport == "streaming"


def test_legacy_framework_versions_parse():
    assert parse_params({"X-Atmosphere-Framework": "2.3.8-javascript"}).framework_version == (2, 3, 8)
    assert parse_params({"X-Atmosphere-Framework": "4.0.2"}).framework_version == (4, 0, 2)


@pytest.mark.parametrize("query, reason", [
    ({"X-Atmosphere-Transport": "carrier-pigeon"}, "X-Atmosphere-Transport"),
    ({"X-Heartbeat-Server": "soon"}, "X-Heartbeat-Server"),
    ({"X-Heartbeat-Server": "-5"}, "X-Heartbeat-Server"),
    ({"X-Atmosphere-TrackMessageSize": "perhaps"}, "X-Atmosphere-TrackMessageSize"),
])
def test_malformed_params_give_a_one_line_reason(query, reason):
    with pytest.raises(ProtocolError) as info:
        parse_params(query)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_a_client_older_than_2_2_1_asking_for_the_handshake_is_refused():
    with pytest.raises(VersionNotSupported):
        parse_params({"X-Atmosphere-Framework": "2.2.0-jquery", "X-atmo-protocol": "true"})
    # Without the protocol, an old client is fine.
    parse_params({"X-Atmosphere-Framework": "2.2.0-jquery"})


def test_handshake_format():
    uuid = "c0ffee00-1111-2222-3333-444455556666"
    assert handshake(uuid) == f"{uuid}|0|X|"
    assert frame(handshake(uuid), True) == f"41|{uuid}|0|X|"
    assert frame(handshake(uuid, 60000), True) == f"45|{uuid}|60000|X|"


def test_handshake_is_resent_on_reconnect_only_to_5x():
    first = parse_params({"X-atmo-protocol": "true", "X-Atmosphere-Framework": "4.0.2"})
    assert handshake_due(first)
    legacy_again = parse_params({"X-atmo-protocol": "true", "X-Atmosphere-Framework": "4.0.2",
                                 "X-Atmosphere-tracking-id": "abc"})
    assert not handshake_due(legacy_again)
    modern_again = parse_params({"X-atmo-protocol": "true", "X-Atmosphere-Framework": "5.0.7",
                                 "X-Atmosphere-tracking-id": "abc"})
    assert handshake_due(modern_again)
    assert not handshake_due(parse_params({"X-Atmosphere-Framework": "5.0.7"}))


def test_lengths_count_utf16_code_units():
    # The values checked against the real 5.x parser (§3.1).
    assert frame("a😀b", True) == "4|a😀b"
    assert frame("é€", True) == "2|é€"
    assert utf16_len("\u2028") == 1
    assert frame("x", False) == "x"


def test_heartbeat_negotiation():
    assert heartbeat_interval(30, None) == 30
    assert heartbeat_interval(30, 0) is None
    assert heartbeat_interval(30, 10) == 30   # raised to the configured period
    assert heartbeat_interval(30, 120) == 120
    assert heartbeat_interval(0, 60) is None
    assert is_heartbeat("X") and not is_heartbeat("X ")


def test_tracking_ids():
    assert valid_tracking_id("c0ffee00-1111-2222-3333-444455556666")
    assert not valid_tracking_id("0")
    assert not valid_tracking_id("../etc")
    assert not valid_tracking_id("x" * 129)


@given(st.dictionaries(
    st.sampled_from(["X-Atmosphere-Transport", "X-Atmosphere-tracking-id", "X-Heartbeat-Server",
                     "X-atmo-protocol", "X-Atmosphere-Offset", "X-Atmosphere-Framework",
                     "X-Atmosphere-TrackMessageSize", "Content-Type", "Upgrade", "X-Other",
                     "X-Atmosphere_Transport"]),
    st.sampled_from(["long-polling", "sse", "abc", "5", "true", "5.0.7", "", "x y"]),
    max_size=6))
def test_the_endpoints_header_shortcut_reads_what_werkzeug_reads(headers):
    """``protocol_headers(environ)`` gives ``parse_params`` what Werkzeug's
    whole ``EnvironHeaders`` would: the same parameters or the same refusal."""
    environ = EnvironBuilder(headers=list(headers.items())).get_environ()

    def outcome(items):
        try:
            return parse_params({}, items)
        except ProtocolError as exc:
            return type(exc), str(exc)
    assert outcome(protocol_headers(environ)) == outcome(EnvironHeaders(environ))
