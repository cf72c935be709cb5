"""The suite's own rules, checked on its source: every test can fail.

Two rules, read from the syntax tree of every Python file under ``tests/``:

1. **No sleeping in place of synchronisation.** A sleep — ``time.sleep``,
   ``asyncio.sleep`` with a non-zero delay (``asyncio.sleep(0)`` only yields to
   the event loop) or ``qtbot.wait`` (pytest-qt's sleep with the Qt loop
   running) — is allowed only

   - as the pause of a ``while`` loop (a poll that re-checks an observable
     condition each turn, bounded by its own deadline) — a loop that only
     watches the clock (``while time.monotonic() < deadline: sleep()``, no
     way out but the deadline) is a sleep in disguise and does not count, or
   - on a line marked ``# waits-on: external clock`` followed by why, for a
     test that must let real time pass (a timeout, an expiry, a rate window),
     where no event exists to wait on.

   Anything else ("give the daemon a moment") is a race that passes on a fast
   machine and proves nothing: wait on the condition instead.

2. **Every test checks something.** A ``test_*`` function must contain an
   ``assert`` statement (of something other than a constant), a
   ``pytest.raises``/``pytest.warns``/``pytest.fail`` call, or a call to a
   helper named ``assert_*``/``expect_*`` (a helper that raises when its
   condition does not hold). A test that only runs code stays green whatever
   that code does.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: the marker that lets real time pass on purpose (rule 1)
EXTERNAL_CLOCK = "# waits-on: external clock"
#: pytest calls that are explicit checks on their own (rule 2)
PYTEST_CHECKS = {"raises", "warns", "fail", "deprecated_call"}
#: name prefixes of helpers that raise when their check fails (rule 2)
CHECK_HELPERS = ("assert_", "expect_")


def _sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


#: modules whose ``sleep`` lets time pass
SLEEP_MODULES = {"time", "asyncio"}
#: names a pytest-qt fixture is given here; ``<name>.wait(ms)`` sleeps
QTBOT_NAMES = {"qtbot"}


def _sleep_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names bound to the ``time``/``asyncio`` modules and to their ``sleep`` in this
    file."""
    modules, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name in SLEEP_MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES:
            functions |= {a.asname or a.name for a in node.names if a.name == "sleep"}
    return modules, functions


def _only_yields(call: ast.Call) -> bool:
    """``asyncio.sleep(0)``: hands the event loop a turn, lets no time pass."""
    return len(call.args) == 1 and isinstance(call.args[0], ast.Constant) and \
        call.args[0].value == 0


def _is_sleep(call: ast.Call, modules: set[str], functions: set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.attr == "sleep" and func.value.id in modules:
            return not _only_yields(call)
        return func.attr == "wait" and func.value.id in QTBOT_NAMES
    return isinstance(func, ast.Name) and func.id in functions and not _only_yields(call)


def _is_clock_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        isinstance(node.func.value, ast.Name) and node.func.value.id == "time"


def _is_plain_value(node: ast.AST) -> bool:
    """A deadline-like operand: names, constants and arithmetic on them."""
    if isinstance(node, ast.BinOp):
        return _is_plain_value(node.left) and _is_plain_value(node.right)
    return isinstance(node, ast.Name | ast.Constant)


def _watches_only_the_clock(loop: ast.While) -> bool:
    """A loop whose condition compares the clock with a deadline and nothing else, and
    whose body cannot leave it early: it re-checks nothing, it only lets time pass."""
    test = loop.test
    if not isinstance(test, ast.Compare):
        return False
    operands = [test.left, *test.comparators]
    if not any(_is_clock_call(o) for o in operands) or \
            not all(_is_clock_call(o) or _is_plain_value(o) for o in operands):
        return False
    exits = (ast.If, ast.Break, ast.Return, ast.Raise, ast.Assert)
    return not any(isinstance(n, exits) for b in loop.body for n in ast.walk(b))


def _walk_with_loop(node: ast.AST, in_poll: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, with whether its nearest enclosing loop (in the same function) is a
    ``while`` loop that polls a condition."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = False
        elif isinstance(child, ast.While):
            inner = not _watches_only_the_clock(child)
        elif isinstance(child, ast.For | ast.AsyncFor):
            inner = False
        else:
            inner = in_poll
        yield child, in_poll
        yield from _walk_with_loop(child, inner)


def unmarked_sleeps(source: str) -> list[int]:
    """Line numbers of ``time.sleep`` calls that break rule 1."""
    tree = ast.parse(source)
    modules, functions = _sleep_names(tree)
    lines = source.splitlines()
    bad = []
    for node, in_poll in _walk_with_loop(tree):
        if not (isinstance(node, ast.Call) and _is_sleep(node, modules, functions)):
            continue
        if in_poll or EXTERNAL_CLOCK in lines[node.lineno - 1]:
            continue
        bad.append(node.lineno)
    return bad


def _is_check(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return not isinstance(node.test, ast.Constant)  # ``assert True`` checks nothing
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id == "pytest":
            return func.attr in PYTEST_CHECKS
        return func.attr.startswith(CHECK_HELPERS)
    return isinstance(func, ast.Name) and func.id.startswith(CHECK_HELPERS)


def _tests(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            candidates: list[ast.stmt] = node.body
        else:
            candidates = [node]
        for item in candidates:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and \
                    item.name.startswith("test_"):
                yield item


def unchecked_tests(source: str) -> list[str]:
    """Names of test functions that break rule 2."""
    tree = ast.parse(source)
    return [t.name for t in _tests(tree) if not any(_is_check(n) for n in ast.walk(t))]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_sleep_stands_in_for_synchronisation(path: Path) -> None:
    bad = unmarked_sleeps(path.read_text())
    assert not bad, (f"{path.relative_to(TESTS)}: a sleep on line(s) {bad}: wait on an "
                     f"observable condition, or mark the line '{EXTERNAL_CLOCK} — why'")


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(TESTS)))
def test_every_test_checks_something(path: Path) -> None:
    bad = unchecked_tests(path.read_text())
    assert not bad, f"{path.relative_to(TESTS)}: tests with no assert/pytest.raises: {bad}"


# --- the checker itself can fail -------------------------------------------------

def test_checker_flags_a_bare_sleep_and_accepts_polls_and_marked_clocks() -> None:
    source = (
        "import time\n"
        "from time import sleep as nap\n"
        "def test_a():\n"
        "    time.sleep(0.2)\n"
        "    nap(1)\n"
        "    for _ in range(3):\n"
        "        time.sleep(0.1)\n"
        "    while not done():\n"
        "        time.sleep(0.05)\n"
        "    time.sleep(1.1)  # waits-on: external clock — the token must expire\n"
        "    assert True\n"
    )
    assert unmarked_sleeps(source) == [4, 5, 7]


def test_checker_flags_asyncio_sleeps_and_qtbot_waits_but_not_a_yield() -> None:
    source = (
        "import asyncio\n"
        "async def test_a(qtbot):\n"
        "    await asyncio.sleep(0.3)\n"
        "    await asyncio.sleep(0)\n"
        "    qtbot.wait(300)\n"
        "    qtbot.waitUntil(done)\n"
        "    qtbot.wait(1000)  # waits-on: external clock — a minute of idling\n"
        "    while not done():\n"
        "        await asyncio.sleep(0.01)\n"
        "    assert True\n"
    )
    assert unmarked_sleeps(source) == [3, 5]


def test_checker_flags_a_loop_that_only_watches_the_clock() -> None:
    source = (
        "import time\n"
        "def test_a():\n"
        "    deadline = time.monotonic() + 1\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.1)  # waits-on: external clock — a second of idling\n"
        "    while time.monotonic() < deadline:\n"
        "        if done():\n"
        "            break\n"
        "        time.sleep(0.1)\n"
        "    while not done() and time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
        "    assert True\n"
    )
    assert unmarked_sleeps(source) == [5]


def test_checker_flags_a_test_without_a_check() -> None:
    source = (
        "import pytest\n"
        "def test_runs_only():\n"
        "    do_something()\n"
        "def test_asserts():\n"
        "    assert do_something()\n"
        "def test_raises():\n"
        "    with pytest.raises(ValueError):\n"
        "        do_something()\n"
        "def test_asserts_a_constant():\n"
        "    do_something()\n"
        "    assert True\n"
        "def test_helper(events):\n"
        "    events.expect_event('x')\n"
        "def helper_not_a_test():\n"
        "    pass\n"
        "class TestGroup:\n"
        "    def test_in_class(self):\n"
        "        pass\n"
    )
    assert unchecked_tests(source) == ["test_runs_only", "test_asserts_a_constant",
                                       "test_in_class"]
