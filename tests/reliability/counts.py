"""The reliability suite's one line of counts, summed over its cases and printed at the end of the run."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Counts:
    injected: int = 0  # faults put in the way (objects damaged, files planted, servers killed, ...)
    detected: int = 0  # of those, caught: a failed verification, an I/O error or refusal counted by a tier,
    #                    or (for what no read met) found by `kvtier cache verify` / a read of the value
    recomputed: int = 0  # blocks the engine computed again because a tier could not serve them
    wrong: int = 0  # outputs that differ from the run with every block resident (must be 0)
    crashes: int = 0  # exceptions out of the engine (must be 0)
    hangs: int = 0  # runs that did not finish in time (must be 0)

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def line(self) -> str:
        return ("reliability: faults injected {injected}, detected {detected}, recomputed {recomputed} blocks, wrong "
                "outputs {wrong}, crashes {crashes}, hangs {hangs}".format(**vars(self)))


TOTAL = Counts()
CASES: list[tuple[str, Counts]] = []


def record(name: str, counts: Counts) -> None:
    TOTAL.add(counts)
    CASES.append((name, counts))
