"""pytest plumbing for the micro-benchmarks: collect ``bench_*.py`` files (so that
``pytest benchmarks`` runs them; the project's own pattern is ``test_*.py``), make
the repository root importable (``tests.core.reference_router``), and print the
speed-up ratios that the ``bench_*.py`` files measure at the end of the run.

May import: pytest, the standard library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_speedups: dict[str, float] = {}


def pytest_collect_file(parent, file_path):
    # A file named on the command line is collected by pytest itself already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def speedups() -> dict[str, float]:
    """What was measured -> how many times faster the native code is than its reference."""
    return _speedups


def pytest_terminal_summary(terminalreporter):
    if _speedups:
        terminalreporter.section("native speed-up over the reference (same run)")
        for what, ratio in _speedups.items():
            terminalreporter.write_line(f"{what:<40} {ratio:8.1f}x")
