"""``fastgw demo``: the gateway on an embedded config (``demo.toml``) in front of demo
backends it starts itself on free loopback ports, so a newcomer sees routing, params,
rewrites, weighted balancing and the error answers with no file of their own.

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


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _handler(service: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per response: separate header and body writes meet Nagle and delayed
        # ACKs on a kept-alive connection and cost 40 ms each.
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:  # quiet: fastgw logs
            pass

        def _reply(self, status: int, payload: object) -> None:
            body = json.dumps(payload, indent=2).encode() + b"\n"
            self.send_response(status)
            self.send_header("content-type", "application/json")
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
        server = ThreadingHTTPServer(sock.getsockname(), _handler(service), bind_and_activate=False)
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

    ``ports`` maps ``users_a``, ``users_b``, ``echo`` and ``dead`` to the backends' ports;
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

    sockets = {name: _free_socket() for name in ("users-a", "users-b", "echo")}
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
