"""The gateway's runtime folder: the config texts its supervisor validated, and the status
every process of it publishes there, for the admin process (fastgw.admin) to read.

The folder is websocket_registry's: ``<temp dir>/fastgw-<uid>-<supervisor pid>``, made
0700 and refused when it is not this user's alone. What lives there besides the command
sockets:

- ``config-<generation>.toml``: the exact bytes of a config the supervisor validated
  (generation 1 at start, one more per accepted reload). Workers (and the admin
  process) load that copy on SIGHUP, never the file, so an edit made meanwhile cannot
  make them run different configs. The two newest are kept.
- ``supervisor.json``: its pid, start time, the generation and digest it runs, and the
  last reload's outcome (``seq`` counts reloads asked for, accepted or refused).
- ``worker-<slot>.json``: the pid, generation and digest each worker slot runs, since when.

Every file is written whole, then renamed into place: a reader never sees half of one.

May import: the standard library, fastgw.websocket_registry (the folder).
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastgw.websocket_registry import _own_folder, runtime_dir

__all__ = ["config_copy", "prepare", "read_json", "remove", "runtime_dir", "write_config", "write_json"]

SUPERVISOR = "supervisor.json"
#: config copies kept (the running one and the one before)
KEPT_CONFIGS = 2


def prepare(supervisor_pid: int) -> str:
    """The runtime folder of this supervisor, made (0700) when missing."""
    directory = runtime_dir(supervisor_pid)
    _own_folder(directory)
    return directory


def worker_file(slot: int) -> str:
    return f"worker-{slot}.json"


def config_copy(directory: str, generation: int) -> str:
    return os.path.join(directory, f"config-{generation}.toml")


def _write(path: str, data: bytes) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def write_config(directory: str, generation: int, data: bytes) -> str:
    """``data`` as ``config-<generation>.toml``; older copies beyond the kept ones removed."""
    path = config_copy(directory, generation)
    _write(path, data)
    try:
        os.unlink(config_copy(directory, generation - KEPT_CONFIGS))
    except OSError:
        pass
    return path


def write_json(directory: str, name: str, value: dict[str, Any]) -> None:
    _write(os.path.join(directory, name), json.dumps(value).encode())


def read_json(directory: str, name: str) -> dict[str, Any] | None:
    """The object in ``name``, or None when there is none (yet)."""
    try:
        with open(os.path.join(directory, name), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def remove(directory: str) -> None:
    """The supervisor stops: its files go, and the folder when nothing else is left."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.endswith((".json", ".toml", ".tmp")):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    try:
        os.rmdir(directory)
    except OSError:
        pass
