"""``fastgw.socket_writes`` against a real uvloop transport over a real TCP connection on
127.0.0.1: bytes written at once never overtake what the transport holds, what the
socket does not take goes through the transport, TLS gets no descriptor, and the
descriptor is the connection's own (the end-to-end side: tests/test_proxy.py,
``test_responses_after_a_slowly_read_one_wait_their_turn``, and
``test_a_worker_keeps_no_descriptor_of_a_closed_connection`` below).

The loop is not run between the steps that matter: what the transport holds stays
there until the test lets it write, so the order is decided by ``send_bytes`` alone.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import time

import httpx
import pytest
import uvloop

from fastgw.socket_writes import dup_socket, release_socket, send_bytes
from tests.conftest import config_for
from tests.test_server import children
from tests.test_tls import CA


@pytest.fixture
def connected():
    """A uvloop transport on one end of a TCP connection (small buffers, so that they
    fill), the plain socket of the other end, and the loop."""
    loop = uvloop.new_event_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=ours))
    yield loop, transport, peer
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()
    loop.close()


def read_all(loop, peer: socket.socket, n: int) -> bytes:
    """Run the loop (the transport writes what it holds) while reading ``n`` bytes."""
    peer.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.001))
        try:
            while data := peer.recv(65536):
                got += data
        except BlockingIOError:
            pass
    return bytes(got)


def test_bytes_written_at_once_never_overtake_what_the_transport_holds(connected):
    loop, transport, peer = connected
    fd = dup_socket(transport)
    assert fd >= 0
    try:
        big = b"A" * 4_000_000
        buffered = send_bytes(fd, transport, False, big)
        # The socket took what fits; the transport holds the rest.
        assert buffered and transport.get_write_buffer_size() > 0
        # The peer reads some: the socket has room again, the transport still holds bytes
        # (the loop has not run).
        assert select.select([peer], [], [], 5)[0] == [peer]
        peer.setblocking(False)
        first = b""
        try:
            while data := peer.recv(65536):
                first += data
        except BlockingIOError:
            pass
        assert select.select([], [fd], [], 5)[1] == [fd], "the socket never had room again"
        held = transport.get_write_buffer_size()
        assert held > 0
        # A write now goes after the held bytes, through the transport.
        assert send_bytes(fd, transport, buffered, b"B" * 10)
        assert transport.get_write_buffer_size() == held + 10
        rest = read_all(loop, peer, len(big) + 10 - len(first))
        assert first + rest == big + b"B" * 10
        # Once the transport is empty, writes go straight to the socket again.
        assert transport.get_write_buffer_size() == 0
        assert not send_bytes(fd, transport, True, b"C" * 10)
        assert transport.get_write_buffer_size() == 0
        assert read_all(loop, peer, 10) == b"C" * 10
    finally:
        release_socket(fd)


def test_an_error_goes_to_the_transport(connected):
    """A write the socket refuses (the peer reset the connection) is the transport's to
    report: it closes, as it would have for its own write."""
    loop, transport, peer = connected
    fd = dup_socket(transport)
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        time.sleep(0.05)
        for _ in range(3):  # (the first send may still succeed before the RST is seen)
            if transport.is_closing():
                break
            send_bytes(fd, transport, False, b"x" * 1000)
            loop.run_until_complete(asyncio.sleep(0.01))
        assert transport.is_closing()
    finally:
        release_socket(fd)


def test_the_descriptor_is_the_connections_own(connected):
    loop, transport, peer = connected
    fd = dup_socket(transport)
    loop_fd = transport.get_extra_info("socket").fileno()
    assert fd not in (-1, loop_fd)
    assert os.get_inheritable(fd) is False  # close-on-exec: never in a child process
    assert os.fstat(fd).st_ino == os.fstat(loop_fd).st_ino  # the same socket
    assert release_socket(fd) == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    assert release_socket(-1) == -1  # (nothing: no error)


def test_a_tls_transport_gets_no_descriptor(tmp_path):
    """Bytes written beside a TLS layer would be plaintext on the wire: none is given."""
    ca = CA(tmp_path)
    cert, key = ca.leaf("server", ["localhost"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca.path))
    loop = uvloop.new_event_loop()

    async def go() -> int:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx,
                                                    server_hostname="localhost")
        try:
            return dup_socket(transport)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    try:
        assert loop.run_until_complete(go()) == -1
    finally:
        loop.close()


def worker_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_worker_keeps_no_descriptor_of_a_closed_connection(make_backend, gateway):
    """Each plain connection holds a second descriptor of its socket while it is open (two
    with its upstream's): when the connections close, the worker is back where it was."""
    toml, port = config_for(make_backend("plain"), log='access = "off"')
    gw = gateway(toml, port)
    [worker] = children(gw.proc.pid)
    with httpx.Client(base_url=gw.url) as client:  # the upstream pool's connection, made
        assert client.get("/echo/warm").status_code == 200
    time.sleep(0.2)
    before = worker_descriptors(worker)
    clients = [httpx.Client(base_url=gw.url) for _ in range(20)]
    for i, client in enumerate(clients):
        assert client.get(f"/echo/{i}").status_code == 200
    # 20 open client connections: each with its duplicate
    assert worker_descriptors(worker) >= before + 40
    for client in clients:
        client.close()
    deadline = time.monotonic() + 5
    while worker_descriptors(worker) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker_descriptors(worker) == before
