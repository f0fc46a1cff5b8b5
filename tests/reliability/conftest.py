from __future__ import annotations

from typing import Any

from tests.tiers.remote.redis_server import redis_server  # noqa: F401  (the fixture)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.reliability.counts import CASES, TOTAL

    if CASES:
        for name, counts in CASES:
            terminalreporter.write_line(f"  {name}: {counts.line().removeprefix('reliability: ')}")
        terminalreporter.write_line(TOTAL.line())
