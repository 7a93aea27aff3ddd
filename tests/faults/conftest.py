"""Fault-suite fixtures: `recovery` records each fault's measured time to recover, and the run
ends with a table of them (the source of tests/faults/README.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Recovery:
    fault: str
    outcome: str
    seconds: float
    test: str


_RECORDED: list[Recovery] = []


@pytest.fixture
def recovery(request: pytest.FixtureRequest) -> Callable[[str, str, float], None]:
    """`recovery(fault, what_happened, seconds)`: note one measured time to recover."""

    def record(fault: str, outcome: str, seconds: float) -> None:
        _RECORDED.append(Recovery(fault, outcome, seconds, request.node.name))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDED:
        return
    terminalreporter.section("fault suite: time to recover (this run)")
    terminalreporter.write_line("| fault | what happened | time to recover | test |")
    terminalreporter.write_line("|---|---|---|---|")
    for rec in _RECORDED:
        terminalreporter.write_line(
            f"| {rec.fault} | {rec.outcome} | {_duration(rec.seconds)} | `{rec.test}` |"
        )


def _duration(seconds: float) -> str:
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"
