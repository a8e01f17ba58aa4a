"""``fastgw demo``: the gateway on an embedded config (``demo.toml``) in front of demo
backends it starts itself on free loopback ports, so a newcomer sees routing, params,
rewrites, weighted balancing, the error answers and an aggregate route (a bank transfer
with its compensation) with no file of their own.

What lives here: the demo backends (users, echo, and ``Bank``, the two demo banks behind
the ``transfer`` and ``balances`` aggregate routes), ``demo_config`` (``demo.toml`` with
its ports filled in), ``tour`` (what the demo prints), ``make_certificate`` (for
``--tls-port``) and ``run_demo``.

The backends are deliberately plain (the standard library's threading HTTP server in a
child process): they are there to be proxied, not to be fast.

May import: the standard library, fastgw.server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

USERS = {"1": {"id": 1, "name": "Ada Lovelace"}, "2": {"id": 2, "name": "Alan Turing"},
         "3": {"id": 3, "name": "Grace Hopper"}}

# The demo banks' services (their sockets' names) and opening balances.
BANKS = {"bank-a": {"alice": 100, "bob": 20}, "bank-b": {"carol": 50}}


# -- the demo banks ------------------------------------------------------------------------------


class Bank:
    """One demo bank, in memory: ``GET /accounts`` (every balance), ``GET
    /accounts/{a}/balance``, ``POST /accounts/{a}/withdraw`` and ``/deposit`` with
    ``{"amount": n}`` (a positive integer, else 400); 404 for an unknown account, 409 for
    insufficient funds.

    A POST with an ``Idempotency-Key`` is applied once: the same key again, for the same
    method, path and body, gets the first answer back (marked ``Idempotent-Replayed:
    true``) and changes nothing; for another request it is a 422. That is what the
    gateway's aggregate calls send the key for: a retried call cannot move money twice.
    """

    MAX_KEYS = 10_000  # answers kept per bank: a demo left running must not grow forever

    def __init__(self, name: str, balances: dict[str, int]) -> None:
        self.name = name
        self.balances = dict(balances)
        # key -> (the request it came with, status, answer), oldest first
        self.answers: dict[str, tuple[tuple[str, str, bytes], int, dict[str, object]]] = {}
        # One lock for everything, held from the key's look-up to its answer's storing:
        # a request repeated while the first is running waits for it, then is replayed.
        self.lock = threading.Lock()

    def serve(self, method: str, path: str, body: bytes, key: str | None) -> tuple[int, dict[str, object], bool]:
        """(status, JSON answer, whether it is a replay) for one request."""
        with self.lock:
            if not key or method != "POST":  # GETs are safe to repeat: nothing to keep
                return (*self._apply(method, path, body), False)
            request = (method, path, body)
            if key in self.answers:
                first, status, answer = self.answers[key]
                if first != request:
                    return 422, {"error": f"Idempotency-Key {key} was used for another request"}, False
                return status, answer, True
            status, answer = self._apply(method, path, body)
            self.answers[key] = (request, status, answer)
            if len(self.answers) > self.MAX_KEYS:
                del self.answers[next(iter(self.answers))]
            return status, answer, False

    def _apply(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
        parts = path.strip("/").split("/")
        if parts == ["accounts"] and method == "GET":
            return 200, {"bank": self.name, "balances": dict(self.balances)}
        if len(parts) != 3 or parts[0] != "accounts" or parts[2] not in ("balance", "withdraw", "deposit"):
            return 404, {"error": "no such thing"}
        account, action = parts[1], parts[2]
        if (method, action) not in (("GET", "balance"), ("POST", "withdraw"), ("POST", "deposit")):
            return 405, {"error": "method not allowed"}
        if account not in self.balances:
            return 404, {"error": f"no account {account}"}
        if action != "balance":
            try:
                amount = json.loads(body or b"{}").get("amount")
            except (ValueError, AttributeError):
                amount = None
            # (bool is an int in Python; true is not an amount)
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                return 400, {"error": 'want {"amount": n}, n a positive integer'}
            if action == "withdraw":
                if self.balances[account] < amount:
                    return 409, {"error": "insufficient funds"}
                self.balances[account] -= amount
            else:
                self.balances[account] += amount
        return 200, {"bank": self.name, "account": account, "balance": self.balances[account]}


# -- the backends' process -----------------------------------------------------------------------


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _handler(service: str, bank: Bank | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per response: separate header and body writes meet Nagle and delayed
        # ACKs on a kept-alive connection and cost 40 ms each.
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:  # quiet: fastgw logs
            pass

        def _reply(self, status: int, payload: object, replayed: bool = False) -> None:
            body = json.dumps(payload, indent=2).encode() + b"\n"
            self.send_response(status)
            self.send_header("content-type", "application/json")
            if replayed:
                self.send_header("idempotent-replayed", "true")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def handle_any(self) -> None:
            body = self._body()
            path, _, query = self.path.partition("?")
            if bank is not None:
                self._reply(*bank.serve(self.command, path, body, self.headers.get("idempotency-key")))
                return
            if service == "echo":
                if path == "/slow":
                    time.sleep(3)
                self._reply(200, {"service": "echo", "method": self.command, "path": path,
                                  "query": query, "headers": dict(self.headers.items()),
                                  "body_bytes": len(body)})
                return
            if path == "/healthz":
                self._reply(200, {"served_by": service, "status": "ok"})
                return
            parts = path.strip("/").split("/")
            if parts == ["users"] and self.command == "GET":
                self._reply(200, {"served_by": service, "users": list(USERS.values())})
            elif parts == ["users"] and self.command == "POST":
                self._reply(201, {"served_by": service, "created": json.loads(body or b"{}")})
            elif len(parts) == 2 and parts[0] == "users" and parts[1] in USERS:
                self._reply(200, {"served_by": service, **USERS[parts[1]]})
            else:
                self._reply(404, {"served_by": service, "error": "no such user"})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    return Handler


def _serve_backends(sockets: dict[str, socket.socket]) -> None:
    """In the backend child process: serve every demo service until killed."""
    servers = []
    for service, sock in sockets.items():
        bank = Bank(service.replace("-", "_"), BANKS[service]) if service in BANKS else None
        server = ThreadingHTTPServer(sock.getsockname(), _handler(service, bank), bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        sock.listen(128)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    # SIGTERM from the demo process only. Ctrl-C's SIGINT reaches the whole process group;
    # it stays blocked here, so the backends live until the gateway has drained.
    signal.sigwait({signal.SIGTERM})


CONFIG_BEGIN = "# ---- the demo's config: begin ----"
CONFIG_END = "# ---- the demo's config: end ----"


def demo_config(port: int, ports: dict[str, int]) -> str:
    """``demo.toml`` with its port placeholders filled in: a config that runs as is.

    ``ports`` maps ``users_a``, ``users_b``, ``echo``, ``bank_a``, ``bank_b`` and ``dead``
    to the backends' ports;
    ``{examples}`` is the folder of the example plugins shipped with fastgw.
    The template's own header (which explains the placeholders) is replaced by one that
    names the ports, so that the text has no placeholder left outside path patterns.
    """
    template = resources.files("fastgw").joinpath("demo.toml").read_text()
    lines = template.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the template's header
    text = "".join(lines)
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
    for name, value in {"port": port, "examples": examples, **ports}.items():
        text = text.replace("{" + name + "}", str(value))
    backends = ", ".join(f"{name.replace('_', '-')} on {value}" for name, value in ports.items() if name != "dead")
    dead = f"; nothing listens on {ports['dead']}" if "dead" in ports else ""
    return (f"# The config `fastgw demo --port {port}` runs. Its backends listen on loopback ports\n"
            f"# picked at start ({backends}{dead}).\n\n" + text)


def tour(port: int, config: str) -> str:
    """What the demo prints once it serves: the config it runs, then what to try."""
    base = f"http://127.0.0.1:{port}"
    return f"""
fastgw demo: the gateway listens on {base}, in front of demo backends on loopback.
The config it runs, as is (the backends' ports change with every run): save it as
demo.toml, and `fastgw check -c demo.toml` or `fastgw explain -c demo.toml GET /users/2`
work on it.

{CONFIG_BEGIN}
{config.rstrip()}
{CONFIG_END}

Try, in another terminal (each response carries an X-Request-Id; the access log is below):

  curl -i {base}/users                 # routed; two backends 1:3, see "served_by"; RateLimit-* fields
  curl -i {base}/users/2               # a {{param}} segment
  curl -i --http2-prior-knowledge {base}/users/2   # the same over HTTP/2 (h2c)
  curl -i {base}/profile/3             # rewritten upstream to /users/3
  curl -i {base}/api/orders?x=1        # prefix route, /api stripped: echo shows what arrived
  curl -i -H 'x-api-key: k-1234' {base}/tenants/hello   # a plugin put X-Tenant: acme on it
  curl -i -X OPTIONS -H 'Origin: http://localhost:3000' -H 'Access-Control-Request-Method: GET' {base}/api/x
  curl -i --path-as-is {base}/api/../users/1   # paths are normalised before routing
  curl -i -H 'Host: admin.localhost' {base}/anything   # a host-only route
  curl -i -X DELETE {base}/users/1     # 405 with Allow
  curl -i {base}/nowhere               # 404, JSON error
  curl -i {base}/broken                # 502: nothing listens behind this route
  curl -i {base}/slow                  # 504: the route's timeout is 1s, the backend takes 3s

Aggregation: one request answered by several backend calls. Bank A holds alice (100) and
bob (20), bank B holds carol (50):

  # 200: alice's balance and a withdrawal at bank A, then a deposit at bank B, in sequence
  curl -i -X POST -H 'content-type: application/json' -d '{{"from":"alice","to":"carol","amount":30}}' {base}/transfer
  # 502: bank B has no "nobody"; the withdrawal was compensated (see "compensations")
  curl -i -X POST -H 'content-type: application/json' -d '{{"from":"alice","to":"nobody","amount":30}}' {base}/transfer
  curl -i {base}/balances              # both banks in one answer: alice got that 30 back

Another port: `fastgw demo --port 9000` (or `make run PORT=9000`). Stop with Ctrl-C.
"""


def make_certificate(folder: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost (EC P-256, 30 days), for
    ``--tls-port``: (its path, its key's path). It is its own CA: ``curl --cacert``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastgw demo")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(folder, "demo-cert.pem"), os.path.join(folder, "demo-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def run_demo(port: int = 8080, tls_port: int | None = None) -> int:
    from fastgw.server import run

    sockets = {name: _free_socket() for name in ("users-a", "users-b", "echo", *BANKS)}
    dead = _free_socket()  # reserved then released: nothing will listen there
    ports = {name.replace("-", "_"): sock.getsockname()[1] for name, sock in sockets.items()}
    ports["dead"] = dead.getsockname()[1]
    dead.close()
    backend = os.fork()
    if backend == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        _serve_backends(sockets)
        os._exit(0)
    for sock in sockets.values():
        sock.close()
    with tempfile.TemporaryDirectory(prefix="fastgw-demo-") as folder:
        path = os.path.join(folder, "demo.toml")
        config = demo_config(port, ports)
        tls_lines = ""
        if tls_port is not None:
            cert, key = make_certificate(folder)
            config = config.replace("\n[log]\n", f'\n[server.tls]\nlisten = ["127.0.0.1:{tls_port}"]\n'
                                                  f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
                                                  "\n[log]\n", 1)
            tls_lines = (f"\nHTTPS (a certificate the demo made for 127.0.0.1; it is its own CA):\n\n"
                         f"  curl -i --cacert {cert} https://127.0.0.1:{tls_port}/users/2\n")
        with open(path, "w") as f:
            f.write(config)
        try:
            return run(path, on_ready=lambda: print(tour(port, config) + tls_lines, file=sys.stderr, flush=True))
        finally:
            os.kill(backend, signal.SIGTERM)
            os.waitpid(backend, 0)
