"""contrib/fastgw.service, the systemd unit: the keys that make it run, reload and drain
as docs/operations.md says."""

from __future__ import annotations

import configparser
import shlex

from fastgw.config import ServerConfig
from fastgw.server import EXIT_CONFIG
from tests.conftest import ROOT


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string((ROOT / "contrib" / "fastgw.service").read_text())
    return parser


def seconds(value: str) -> float:
    return float(value[:-1]) if value.endswith("s") else float(value)


def test_the_unit_runs_reloads_and_drains_the_supervisor():
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert shlex.split(service["ExecStart"]) == ["/usr/local/bin/fastgw", "run", "-c", "/etc/fastgw/fastgw.toml"]
    assert shlex.split(service["ExecStartPre"])[1:] == ["check", "-c", "/etc/fastgw/fastgw.toml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # SIGTERM to the supervisor, which forwards it (its workers drain); not to the group at once.
    assert service["KillMode"] in ("mixed", "process") and service["KillSignal"] == "SIGTERM"
    # Longer than the default drain and the supervisor's grace after it.
    assert seconds(service["TimeoutStopSec"]) > ServerConfig().drain_timeout + 5
    assert service["Restart"] == "on-failure"
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()
    assert service["PrivateTmp"] == "true" and service["NoNewPrivileges"] == "true"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_make_test_stops_at_once_naming_the_apt_get_line_for_what_is_missing(tmp_path):
    """`make prereq` (which `make test` runs first) with no tool on PATH and no nghttp2
    header: one line names every missing package; with everything there, silence."""
    import shutil
    import subprocess

    make = shutil.which("make")
    assert make is not None
    result = subprocess.run([make, "-s", "-C", str(ROOT), "prereq", f"NGHTTP2_HEADER={tmp_path}/none.h"],
                            capture_output=True, text=True, timeout=30, env={"PATH": str(tmp_path)})
    assert result.returncode != 0
    assert result.stdout.splitlines() == [
        "fastgw: the tests need system packages that are missing; install them with:",
        "  sudo apt-get install curl openssl redis-server nghttp2-client chromium chromium-driver libnghttp2-dev"]
    ok = subprocess.run([make, "-s", "-C", str(ROOT), "prereq"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout == ""
