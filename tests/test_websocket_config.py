"""The ``websocket`` route keys: accepted values, and every mistake reported with its
place, as config.py reports all others (tests/test_config.py)."""

from __future__ import annotations

import pytest

from fastgw.config import parse_config
from tests.test_config import errors_of, route

BASE = 'name = "r"\npaths = ["/chat/*"]\nupstream = "users"\n'


def test_a_route_without_websocket_serves_handshakes_as_plain_http():
    assert parse_config(route(BASE)).routes[0].websocket is None


def test_websocket_proxy_is_accepted():
    assert parse_config(route(BASE + 'websocket = "proxy"')).routes[0].websocket == "proxy"


@pytest.mark.parametrize(("line", "error"), [
    ('websocket = "tunnel"', 'routes[0] "r".websocket: expected one of "proxy", "http", got string "tunnel"'),
    ('websocket = true', 'routes[0] "r".websocket: expected one of "proxy", "http", got boolean true'),
    ('websocket = "http"\nmethods = ["POST", "PUT"]',
     'routes[0] "r".methods: has no "GET": a WebSocket handshake is a GET (websocket = "http")'),
    ('websocket = "proxy"\nmethods = ["POST"]',
     'routes[0] "r".methods: has no "GET": a WebSocket handshake is a GET (websocket = "proxy")'),
])
def test_bad_websocket_settings_are_errors_at_their_place(line, error):
    assert errors_of(route(BASE + line)) == [f"fastgw.toml: {error}"]


def test_websocket_http_and_its_limits():
    r = parse_config(route(BASE + 'websocket = "http"')).routes[0]
    assert (r.websocket, r.websocket_max_message, r.websocket_message_rate, r.websocket_ping_interval) == \
        ("http", 1024 * 1024, 100.0, 20.0)
    r = parse_config(route(BASE + 'websocket = "http"\nwebsocket_max_message = "64KiB"\n'
                          'websocket_message_rate = "600/m"\nwebsocket_ping_interval = "45s"')).routes[0]
    assert (r.websocket_max_message, r.websocket_message_rate, r.websocket_ping_interval) == (65536, 10.0, 45.0)


def test_the_http_limits_are_errors_elsewhere_and_all_reported_at_once():
    text = route(BASE + 'websocket = "proxy"\nwebsocket_max_message = "1KiB"\n'
                 'websocket_message_rate = "5/s"\nwebsocket_ping_interval = "1s"')
    assert errors_of(text) == [f'fastgw.toml: routes[0] "r".{key}: applies only to websocket = "http"'
                               for key in ("websocket_max_message", "websocket_message_rate",
                                           "websocket_ping_interval")]
    assert errors_of(route(BASE + 'websocket_message_rate = "5/s"')) == [
        'fastgw.toml: routes[0] "r".websocket_message_rate: applies only to websocket = "http"']
    assert errors_of(route(BASE + 'websocket = "http"\nwebsocket_max_message = "10MB"\n'
                          'websocket_message_rate = "5/sec"\nwebsocket_ping_interval = 20')) == [
        'fastgw.toml: routes[0] "r".websocket_max_message: "10MB" is not a size (did you mean "10MiB"? '
        'use e.g. "512B", "16KiB", "10MiB", "1GiB")',
        'fastgw.toml: routes[0] "r".websocket_message_rate: "5/sec" is not a rate (did you mean "5/s"? '
        'use e.g. "100/s", "6000/m", "50000/h")',
        'fastgw.toml: routes[0] "r".websocket_ping_interval: expected a duration like "5s", got integer 20 '
        '(did you mean "20s"?)',
    ]
    # a bad mode is said once, not again by the limits
    assert errors_of(route(BASE + 'websocket = "htp"\nwebsocket_max_message = "1KiB"')) == [
        'fastgw.toml: routes[0] "r".websocket: expected one of "proxy", "http", got string "htp" '
        '(did you mean "http"?)']
