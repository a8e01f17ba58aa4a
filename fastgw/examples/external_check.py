"""A fastgw plugin: ask another service whether a request may pass, with a timeout.

    [plugins]
    paths = ["plugins"]                 # the folder this file is in

    [routes.external_check]
    url = "http://127.0.0.1:9100/check" # answers 2xx to let the request pass
    timeout = "500ms"
    # forward = ["authorization"]       # the request's fields the service sees (the default)

The call is made with asyncio on the gateway's own event loop: the worker serves other
requests meanwhile. The service gets ``GET <url>`` with the request's method, path and
client address in ``X-Original-*`` fields. A 2xx lets the request go on; any other answer
is 403; no answer within ``timeout`` (or no connection) is 503, so that a service that is
down fails closed.
"""

import asyncio
import urllib.parse

from fastgw.plugin import REQUIRED, Answer

NAME = "external_check"
PRIORITY = 2500  # early: before the rate limits spend a token for a request it refuses
SCHEMA = {
    "url": ("string", REQUIRED),
    "timeout": ("duration", 1.0),
    "forward": ("header_names_any", ("authorization",)),
}


def check(config):
    url = urllib.parse.urlsplit(config["url"])
    if url.scheme != "http" or not url.hostname:
        return [("url", 'must be an http:// URL, e.g. "http://127.0.0.1:9100/check"')]
    return []


async def request(req):
    try:
        status = await asyncio.wait_for(_ask(req), req.config["timeout"])
    except (OSError, asyncio.TimeoutError, ValueError):
        return Answer(503, "authorization service unavailable", [("retry-after", "1")])
    if not 200 <= status < 300:
        return Answer(403, "refused by the authorization service")


async def _ask(req):
    """One HTTP/1.1 GET to the service on a new connection: its status code."""
    url = urllib.parse.urlsplit(req.config["url"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        lines = [f"GET {url.path or '/'}{'?' + url.query if url.query else ''} HTTP/1.1",
                 f"Host: {url.netloc}", "Connection: close",
                 f"X-Original-Method: {req.method}", f"X-Original-Path: {req.path}",
                 f"X-Original-Client: {req.client_ip}", f"X-Request-Id: {req.request_id}"]
        for name in req.config["forward"]:
            value = req.header(name)
            if value is not None:
                lines.append(f"{name}: {value}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = await reader.readline()
        return int(status_line.split()[1])  # "HTTP/1.1 200 OK"
    finally:
        writer.close()
