"""Backends for the WebSocket tests, on 127.0.0.1, each in threads of the test process.

``WsEcho``: a real WebSocket server (the ``websockets`` library's threaded server,
``compression=None``) for routes with ``websocket = "proxy"``. Every connection is
recorded (path, request headers, the close code the client sent). Paths:
  /deny...        answers 403 over plain HTTP instead of switching
  /close...       echoes one message, then closes with 4001 "bye"
  /headers...     sends the handshake's request headers as one JSON message, then echoes
  anything else   echoes every message, text as text and binary as binary

``MessageBackend``: a plain HTTP/1.1 server (``http.server``, keep-alive) for routes with
``websocket = "http"``: it records every request (method, path, query, headers, body) and
answers ``$connect`` with ``connect_status``, ``$disconnect`` with 204, and any other
POST by ``reply`` (by default: 200 echoing the body as it came).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve


class WsEcho:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: one dict per connection: path, headers, close_code (what the client sent), open
        self.connections: list[dict] = []
        self.server = serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None,
                            ping_interval=None, process_request=self._process_request)
        self.port = self.server.socket.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def count(self, prefix: str) -> int:
        """Handshakes seen (switched or refused) whose path starts with ``prefix``."""
        with self.lock:
            return sum(1 for c in self.connections if c["path"].startswith(prefix))

    def closed_with(self, prefix: str, timeout: float = 5.0) -> int | None:
        """The close code of the last connection on ``prefix``, once it has closed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [c for c in self.connections if c["path"].startswith(prefix)]
                if found and not found[-1]["open"]:
                    return found[-1]["close_code"]
            time.sleep(0.02)
        return None

    def _process_request(self, connection: ServerConnection, request):
        with self.lock:
            self.connections.append({"path": request.path, "headers": list(request.headers.raw_items()),
                                     "close_code": None, "open": request.path.startswith("/deny") is False})
        if request.path.startswith("/deny"):
            return connection.respond(403, "no WebSocket for you\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path
        with self.lock:
            record = [c for c in self.connections if c["path"] == path][-1]
        try:
            if path.startswith("/headers"):
                ws.send(json.dumps(list(ws.request.headers.raw_items())))
            if path.startswith("/close"):
                ws.send(ws.recv())
                ws.close(4001, "bye")
                return
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            with self.lock:
                record["close_code"] = ws.close_code
                record["open"] = False


class MessageBackend:
    def __init__(self, keep_bodies: bool = True) -> None:
        self.lock = threading.Lock()
        #: every request: method, path, headers (lower-case name -> value), body (b"" when
        #: not ``keep_bodies``)
        self.seen: list[dict] = []
        self.connect_status = 200
        #: (status, body) for a message POST, from the request's record
        self.reply: Callable[[dict], tuple[int, bytes]] = lambda req: (200, req["body"])
        backend = self

        self.clients: set = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # (its head and body are two writes: without this, each answer would wait
                # for the gateway's delayed ACK of the head)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with backend.lock:
                    backend.clients.add(self.connection)

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                record = {"method": "POST", "path": path, "query": query, "body": body,
                          "headers": {k.lower(): v for k, v in self.headers.items()}}
                with backend.lock:
                    backend.seen.append(record if keep_bodies else {**record, "body": b""})
                if path.endswith("/$connect"):
                    status, payload = backend.connect_status, b'{"connect": "answered"}'
                elif path.endswith("/$disconnect"):
                    status, payload = 204, b""
                else:
                    status, payload = backend.reply(record)
                self.send_response(status)
                if status != 204:
                    self.send_header("content-length", str(len(payload)))
                    self.send_header("content-type", "application/octet-stream")
                self.end_headers()
                if status != 204:
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self, suffix: str = "") -> list[dict]:
        with self.lock:
            return [r for r in self.seen if r["path"].endswith(suffix)] if suffix else list(self.seen)

    def wait_for(self, suffix: str, count: int = 1, timeout: float = 5.0) -> list[dict]:
        """The requests whose path ends with ``suffix``, once there are ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests(suffix)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count} request(s) ending {suffix!r} not seen in {timeout}s: {self.requests()}")

    def close(self) -> None:
        """Stop, and cut the keep-alive connections still open: gone, as a crash would be."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for client in self.clients:
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.thread.join(5)
