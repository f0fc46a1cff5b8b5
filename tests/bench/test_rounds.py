"""Who runs when in a storage-bench round: the leader alternates, the replays reverse, fio never leads."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvtier.bench.rounds import round_order


@dataclass
class Named:
    label: str
    can_lead: bool = False

    def run(self, *args: object) -> None: ...

    def settle(self, ops: object) -> None: ...


def test_round_order_alternates_the_leader_and_reverses_the_replays() -> None:
    sides = [Named("tier", True), Named("python", True), Named("fio_buffered"), Named("fio_direct")]
    labels = [[s.label for s in round_order(sides, i)] for i in (-1, 0, 1, 2)]  # type: ignore[arg-type]
    assert labels[1] == labels[3] == ["tier", "python", "fio_buffered", "fio_direct"]
    assert labels[0] == labels[2] == ["python", "fio_direct", "fio_buffered", "tier"]
    assert [s.label for s in round_order(sides[:2], 1)] == ["python", "tier"]  # type: ignore[arg-type]


def test_round_order_needs_two_sides_that_can_lead() -> None:
    with pytest.raises(AssertionError, match="two time-boxed sides"):
        round_order([Named("tier", True), Named("fio_direct")], 0)  # type: ignore[list-item]
