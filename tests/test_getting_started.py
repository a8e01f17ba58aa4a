"""A new user's first steps, checked: the README's set-up and its ``fastgw`` commands,
``make run PORT=...``, the packaging metadata, and docs that stand alone (they promise
only what works, and cite no file a user does not have). The config ``fastgw demo``
prints is checked by the demo's own test, in test_cli.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path


from tests.conftest import ROOT

README = ROOT / "README.md"
USER_DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
# Files of ours a user reads besides the docs: the build, the packaging, CI.
OWN_FILES = [ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / ".ci" / "run"]
# Internal planning documents: not in the repository, so never cited by what is.
PLANNING = re.compile(r"\bSPEC\b|SPEC\.md|DESIGN\.md|HARDENING")


def fastgw(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))


# -- the README's set-up -----------------------------------------------------------------------


def test_readme_says_how_the_fastgw_command_gets_on_the_path():
    text = README.read_text()
    for way in (". .venv/bin/activate", ".venv/bin/fastgw", "python -m fastgw", "pipx install .", "pip install ."):
        assert way in text, way


def test_readme_shows_how_to_run_the_demo_on_another_port():
    text = README.read_text()
    assert "make run PORT=" in text
    assert "fastgw demo --port" in text


def test_the_readme_config_passes_fastgw_check(tmp_path):
    config = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)[0]
    (tmp_path / "fastgw.toml").write_text(config)
    result = fastgw("check", "-c", "fastgw.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fastgw.toml: ok (3 routes, 1 upstreams")


def _make_n(tmp_path: Path, *args: str, installed: bool = True) -> str:
    """``make -n ARGS`` on a copy of the Makefile (whose .venv counts as installed when
    ``installed``): the commands make would run, none of them run. make is one of the
    README's prerequisites (build-essential), so its absence is a failure, not a skip."""
    assert shutil.which("make"), "make is not installed (apt-get install build-essential)"
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    if installed:
        (tmp_path / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
        later = time.time() + 60
        for stamp in (".venv/bin/activate", ".venv/.installed"):
            (tmp_path / stamp).touch()
            os.utime(tmp_path / stamp, (later, later))
    result = subprocess.run(["make", "-n", *args], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_passes_port_to_the_demo(tmp_path):
    assert ".venv/bin/fastgw demo --port 9000" in _make_n(tmp_path, "run", "PORT=9000").splitlines()
    assert ".venv/bin/fastgw demo --port 8080" in _make_n(tmp_path, "run").splitlines()


def test_make_test_after_the_install_installs_nothing_again(tmp_path):
    commands = _make_n(tmp_path, "test")
    assert "pip install" not in commands
    assert "build_ext --inplace" in commands  # the no-op compile: setup.py skips what is up to date


def test_the_install_says_what_it_builds_and_builds_once(tmp_path):
    """The install step is not silenced (pip -q hid a 2-minute build), announces the build,
    compiles in place first and installs without build isolation, whose own build then
    finds every module up to date (setup.py's BuildExt) instead of compiling it again."""
    commands = _make_n(tmp_path, ".venv/.installed", installed=False).splitlines()
    pip_lines = [line for line in commands if "pip install" in line]
    assert pip_lines and not any(re.search(r"\s-q\b", line) for line in pip_lines), pip_lines
    assert any("building the native modules" in line for line in commands)
    build = next(i for i, line in enumerate(commands) if "setup.py build_ext --inplace" in line)
    install = next(i for i, line in enumerate(commands) if "pip install" in line and "-e" in line)
    assert build < install and "--no-build-isolation" in commands[install]


# -- packaging ---------------------------------------------------------------------------------


def test_pyproject_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    """A license table is deprecated by setuptools (a banner in every build); the SPDX
    string needs setuptools 77, and forbids License classifiers beside it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert not [c for c in project["project"].get("classifiers", []) if c.startswith("License ::")]
    setuptools = next(r for r in project["build-system"]["requires"] if r.startswith("setuptools"))
    assert tuple(int(n) for n in setuptools.partition(">=")[2].split(".")) >= (77,)


# -- the demo's config -------------------------------------------------------------------------


# -- docs that stand alone ---------------------------------------------------------------------


def _citations(paths: list[Path]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in paths for number, line in enumerate(path.read_text().splitlines(), 1)
            if PLANNING.search(line)]


def test_docs_cite_no_internal_planning_file():
    """Users have no SPEC.md, DESIGN.md or HARDENING.md: the docs say what they mean."""
    assert _citations(USER_DOCS + OWN_FILES) == []


def _tracked_sources() -> list[Path]:
    """fastgw's own sources (the compiler's .c output is not among these suffixes)."""
    return sorted(path for path in (ROOT / "fastgw").rglob("*")
                  if path.suffix in {".py", ".pyx", ".pxd", ".pyi", ".toml"} and "__pycache__" not in path.parts)


def test_sources_cite_no_internal_planning_file():
    """Nor do the docstrings and comments of the code they read."""
    assert _citations(_tracked_sources()) == []
