"""The suite's own ``processes`` fixture: a subprocess a test starts, and whatever that
subprocess starts, is killed at teardown, also when the test fails."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

CONFTEST = Path(__file__).with_name("conftest.py")

# Each test starts a child that starts a grandchild (both sleep for ten minutes), writes
# their pids down, and checks they run. The first then fails; in the second the child
# exits by itself, leaving the grandchild behind in its process group.
INNER = """
import os, subprocess, sys
from pathlib import Path

CHILD = (
    "import subprocess, sys, time\\n"
    "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\\n"
    "print(grandchild.pid, flush=True)\\n"
    "if sys.argv[1] == 'stay':\\n"
    "    time.sleep(600)\\n"
)


def family(processes, name, leader):
    child = processes.start(
        [sys.executable, "-c", CHILD, leader], stdout=subprocess.PIPE, text=True
    )
    grandchild = int(processes.read_line(child))
    Path(name).write_text(f"{child.pid} {grandchild}")
    os.kill(grandchild, 0)  # running (raises if not)
    return child


def test_body_raises(processes):
    child = family(processes, "raises.pids", "stay")
    assert child.poll() is None
    raise RuntimeError("the test body failed")


def test_child_exits_leaving_a_grandchild(processes):
    child = family(processes, "leaves.pids", "leave")
    assert child.wait(timeout=120) == 0
"""


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped by its new parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_children_and_grandchildren_die_at_teardown_even_when_the_test_raises(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: the test body failed*"])
    for name in ("raises.pids", "leaves.pids"):
        pids = [int(pid) for pid in (pytester.path / name).read_text().split()]
        assert len(pids) == 2
        assert [pid for pid in pids if running(pid)] == [], f"{name}: left running"
