"""A real HTTP/1.1 backend for end-to-end tests, on 127.0.0.1, built on h11 (a parser
independent of the gateway's llhttp) with a thread per connection.

Endpoints (any method):
  /echo...            200 JSON: method, target, path, query, headers (list of pairs), body_len, body_sha256
                      (values as Latin-1: a field value may carry obs-text bytes, 0x80-0xFF)
  /status/N           answers status N with a JSON body
  /big?bytes=N        N bytes of body with Content-Length, written in 16 KiB pieces
  /chunked?n=K&size=S K chunks of S bytes, chunked framing
  /eof?bytes=N        N bytes, no Content-Length, closes to end the body (HTTP/1.0-style)
  /slow?ms=N          answers after N ms
  /hang               never answers (until the connection closes)
  /reset              closes the connection without answering
  /garbage            answers bytes that are not HTTP
  /truncate?bytes=N   promises Content-Length N*2, sends N bytes, closes
  /flaky              answers ``flaky_status`` (an attribute, 200 unless a test sets it)
  /healthz            answers ``health_status`` (200 unless a test sets it; None: never answers)
  /badchunk           a good chunked head, then a chunk size that is not hex, in one write; closes
  /extra              answers "ok" with Content-Length 2, then more bytes; closes 1 s later
  /count              how many requests this backend saw, and connections opened
Every response carries ``x-backend: <name>``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import h11


class Backend:
    def __init__(self, name: str = "backend") -> None:
        self.name = name
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.requests = 0
        self.connections = 0
        #: connections open now (accepted and not yet closed by either side)
        self.open = 0
        #: what /flaky answers
        self.flaky_status = 200
        #: what /healthz answers (None: it hangs)
        self.health_status: int | None = 200
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.closed = False
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, prefix: str) -> int:
        """Requests seen whose target starts with ``prefix``."""
        with self.lock:
            return sum(1 for seen in self.seen if seen["target"].startswith(prefix))

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        for c in list(self.clients):
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open += 1
                self.clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = self._next(conn, client)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request), event
                body = b""
                while True:
                    part = self._next(conn, client)
                    if part is None:
                        return
                    if isinstance(part, h11.EndOfMessage):
                        break
                    body += part.data
                with self.lock:
                    self.requests += 1
                    self.seen.append({"method": event.method.decode(), "target": event.target.decode("latin-1"),
                                      "headers": [(k.decode(), v.decode("latin-1")) for k, v in event.headers]})
                if not self._answer(conn, client, event, body):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            client.close()
            with self.lock:
                self.open -= 1

    @staticmethod
    def _next(conn: h11.Connection, client: socket.socket):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = client.recv(65536)
                conn.receive_data(data)
                continue
            if event is h11.PAUSED:
                return None
            return event

    def _answer(self, conn: h11.Connection, client: socket.socket, req: h11.Request, body: bytes) -> bool:
        target = req.target.decode("latin-1")
        url = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        send = client.sendall
        base = [("x-backend", self.name)]

        def reply(status: int, payload: bytes, headers=()) -> bool:
            hdrs = base + [("content-length", str(len(payload)))] + list(headers)
            send(conn.send(h11.Response(status_code=status, headers=hdrs)))
            if req.method != b"HEAD":
                send(conn.send(h11.Data(data=payload)))
            send(conn.send(h11.EndOfMessage()))
            return True

        if path.startswith("/echo"):
            info = {"method": req.method.decode(), "target": target, "path": path, "query": url.query,
                    "headers": [[k.decode(), v.decode("latin-1")] for k, v in req.headers],
                    "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
            return reply(200, json.dumps(info).encode(), [("content-type", "application/json")])
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            payload = b"" if status in (204, 304) else json.dumps({"status": status}).encode()
            if status in (204, 304):
                send(conn.send(h11.Response(status_code=status, headers=base)))
                send(conn.send(h11.EndOfMessage()))
                return True
            return reply(status, payload, [("content-type", "application/json")])
        if path == "/big":
            size = int(q.get("bytes", "1048576"))
            send(conn.send(h11.Response(status_code=200, headers=base + [("content-length", str(size))])))
            if req.method != b"HEAD":
                piece = b"x" * 16384
                left = size
                while left > 0:
                    n = min(left, len(piece))
                    send(conn.send(h11.Data(data=piece[:n])))
                    left -= n
            send(conn.send(h11.EndOfMessage()))
            return True
        if path == "/chunked":
            n, size = int(q.get("n", "3")), int(q.get("size", "10"))
            send(conn.send(h11.Response(status_code=200, headers=base + [("transfer-encoding", "chunked")])))
            for i in range(n):
                send(conn.send(h11.Data(data=bytes([97 + i % 26]) * size)))
            send(conn.send(h11.EndOfMessage()))
            return True
        if path == "/eof":
            size = int(q.get("bytes", "1000"))
            send(b"HTTP/1.1 200 OK\r\nx-backend: " + self.name.encode() + b"\r\nconnection: close\r\n\r\n" + b"e" * size)
            return False
        if path == "/slow":
            time.sleep(int(q.get("ms", "100")) / 1000)
            return reply(200, b"slow done")
        if path == "/hang":
            try:
                client.recv(1)  # until the gateway gives up and closes
            except OSError:
                pass
            return False
        if path == "/reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if path == "/garbage":
            send(b"SPDY/9 what is this\r\n\r\n")
            return False
        if path == "/truncate":
            size = int(q.get("bytes", "1000"))
            send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (size * 2) + b"t" * size)
            return False
        if path == "/flaky":
            return reply(self.flaky_status, b'{"backend": "%s"}' % self.name.encode())
        if path == "/healthz":
            if self.health_status is None:
                try:
                    client.recv(1)  # until the checker gives up and closes
                except OSError:
                    pass
                return False
            return reply(self.health_status, b'{"backend": "%s"}' % self.name.encode())
        if path == "/badchunk":
            send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            return False
        if path == "/extra":
            send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforged")
            time.sleep(1)
            return False
        if path == "/count":
            with self.lock:
                info = {"requests": self.requests, "connections": self.connections}
            return reply(200, json.dumps(info).encode())
        return reply(404, b'{"backend": "no such endpoint"}')
