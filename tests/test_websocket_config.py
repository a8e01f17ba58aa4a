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
    ('websocket = "tunnel"', 'routes[0] "r".websocket: expected "proxy", got string "tunnel"'),
    ('websocket = true', 'routes[0] "r".websocket: expected "proxy", got boolean true'),
    ('websocket = "proxy"\nmethods = ["POST"]',
     'routes[0] "r".methods: has no "GET": a WebSocket handshake is a GET (websocket = "proxy")'),
])
def test_bad_websocket_settings_are_errors_at_their_place(line, error):
    assert errors_of(route(BASE + line)) == [f"fastgw.toml: {error}"]
