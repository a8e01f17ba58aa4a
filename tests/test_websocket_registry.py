"""The connection registry on its own (fastgw/websocket_registry.py): ids, the command
socket and its folder, the commands, driven with a registry in this process (the end to
end test with two workers is in test_websocket_http.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from fastgw import websocket_registry
from fastgw.websocket_registry import Registry, runtime_dir, slot_of


class Held:
    """A connection as the registry sees it: records what it is told."""

    def __init__(self, open_: bool = True) -> None:
        self.open = open_
        self.pushed: list = []
        self.closed: list = []

    def push(self, data):
        self.pushed.append(data)
        return self.open

    def close(self, code, reason):
        self.closed.append((code, reason))
        return self.open


@pytest.mark.parametrize(("conn_id", "slot"), [
    ("0-0123456789abcdef", 0), ("12-fedcba9876543210", 12),
    ("x-0123456789abcdef", None), ("0-0123", None), ("0-0123456789ABCDEF", None), ("00123456789abcdef", None),
    ("", None),
])
def test_an_id_names_its_worker_slot(conn_id, slot):
    assert slot_of(conn_id) == slot


def test_new_ids_are_unique_and_name_the_slot():
    registry = Registry()
    registry.bind(3, 12345)
    ids = {registry.new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(slot_of(i) == 3 for i in ids)


def test_commands_over_the_socket_reach_the_connection(tmp_path):
    """A registry serving in a loop of its own thread; the blocking client of another
    'process' (this thread) pushes and closes."""
    pid = 900000 + os.getpid() % 10000  # a supervisor pid of this test's own
    registry, held, gone = Registry(), Held(), Held(open_=False)
    registry.bind(1, pid)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)

        async def main():
            registry.add("1-00000000000000aa", held)
            registry.add("1-00000000000000bb", gone)
            ready.set()

        loop.run_until_complete(main())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        assert oct(os.stat(registry.path).st_mode & 0o777) == "0o600"
        assert oct(os.stat(os.path.dirname(registry.path)).st_mode & 0o777) == "0o700"
        assert websocket_registry.push("1-00000000000000aa", "héllo", supervisor_pid=pid)
        assert websocket_registry.push("1-00000000000000aa", b"\x00\xff", supervisor_pid=pid)
        assert websocket_registry.close("1-00000000000000aa", 4000, "bye", supervisor_pid=pid)
        assert held.pushed == ["héllo", b"\x00\xff"] and held.closed == [(4000, "bye")]
        assert not websocket_registry.push("1-00000000000000bb", "x", supervisor_pid=pid)  # not open
        assert not websocket_registry.push("1-00000000000000cc", "x", supervisor_pid=pid)  # not held
        assert not websocket_registry.push("2-00000000000000aa", "x", supervisor_pid=pid)  # no such worker
    finally:
        loop.call_soon_threadsafe(registry.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert not os.path.exists(runtime_dir(pid))  # the last socket out removed the folder


def test_a_folder_someone_else_could_enter_is_refused(caplog):
    pid = 800000 + os.getpid() % 10000
    folder = runtime_dir(pid)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    registry = Registry()
    registry.bind(0, pid)
    try:
        async def add():
            registry.add("0-00000000000000aa", Held())

        with caplog.at_level(logging.ERROR, logger="fastgw"):
            asyncio.run(add())
        assert registry.failed and registry.path is None
        assert "is not a folder of this user's alone" in caplog.text
        assert not websocket_registry.push("0-00000000000000aa", "x", supervisor_pid=pid)
    finally:
        os.rmdir(folder)


def test_a_connection_of_this_very_process_is_reached_without_a_socket():
    held = Held()
    registry = websocket_registry.REGISTRY
    saved = (registry.slot, registry.supervisor_pid)
    registry.bind(0, 700001)
    registry.connections["0-00000000000000dd"] = held
    try:
        assert websocket_registry.push("0-00000000000000dd", "local", supervisor_pid=700001)
        assert held.pushed == ["local"] and registry.path is None
    finally:
        registry.connections.pop("0-00000000000000dd")
        registry.bind(*saved)
