"""The spread take-over's plan logic (issue 18), with a fake coordination: the plan is written
once and kept by a later claimer of the same incarnation, dropped for another; parts are tried
own-first round the ring; a resumed part expects a lower bound; the claimer waits for every part."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from cluster import spreaddrain
from cluster.coord import MemberRecord, NodeState, Owner, PartRecord, Purpose, SpreadPlan
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.spread import part_order, resumed_expected
from cluster.spreaddrain import (
    counted,
    drain_parts,
    moved_by_parts,
    start_or_keep,
    survivors,
    wait_parts,
)

PLAN = SpreadPlan(("node1", "node3"), ("h:2", "h:1"), ((3, 4), (5, 6)), 7, "/t-1", 1.0)


@dataclass
class FakeCoord:
    """The znodes start_or_keep and wait_parts use, in memory."""

    plan: SpreadPlan | None = None
    current_epoch: int = 7
    owner_purpose: str | None = Purpose.DRAIN
    parts: dict[int, PartRecord] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    records: dict[str, MemberRecord] = field(default_factory=dict)

    def members(self) -> dict[str, MemberRecord]:
        return self.records

    def spread_plan(self, _store: str) -> SpreadPlan | None:
        return self.plan

    def epoch(self, _store: str) -> tuple[int, float] | None:
        return self.current_epoch, 0.0

    def end_spread(self, _store: str) -> None:
        self.calls.append("end")
        self.plan, self.parts = None, {}

    def start_spread(self, _store: str, plan: SpreadPlan) -> None:
        self.calls.append("start")
        self.plan = plan
        self.parts = {i: PartRecord((0,) * len(plan.stores)) for i in range(plan.parts)}

    def spread_part(self, _store: str, index: int) -> PartRecord | None:
        return self.parts.get(index)

    def owner(self, _store: str) -> Owner | None:
        return None if self.owner_purpose is None else Owner("node1", self.owner_purpose, 1)


def fresh() -> SpreadPlan:
    return SpreadPlan(("node3",), ("h:2", "h:1"), ((9,), (9,)), None, "/t-2", 2.0)


def test_a_later_claimer_keeps_the_plan_of_the_same_incarnation() -> None:
    fake = FakeCoord(plan=PLAN)
    plan, kept = start_or_keep(fake, "node2", ("h:2", "h:1"), fresh)  # type: ignore[arg-type]
    assert (plan, kept, fake.calls) == (PLAN, True, [])


@pytest.mark.parametrize(("epoch", "stores"), [(8, ("h:2", "h:1")), (7, ("h:1",))])
def test_a_plan_of_another_incarnation_or_other_stores_is_replaced(
    epoch: int, stores: tuple[str, ...]
) -> None:
    fake = FakeCoord(plan=PLAN, current_epoch=epoch)
    plan, kept = start_or_keep(fake, "node2", stores, fresh)  # type: ignore[arg-type]
    assert not kept and fake.calls == ["end", "start"]
    assert plan.epoch == epoch and plan.survivors == ("node3",)
    assert fake.parts == {0: PartRecord((0, 0))}


def test_a_plan_its_claimer_did_not_count_is_kept_for_the_next_to_count() -> None:
    fake = FakeCoord(plan=replace(PLAN, counts=()))
    plan, kept = start_or_keep(fake, "node2", PLAN.stores, fresh)  # type: ignore[arg-type]
    assert kept and fake.calls == [] and not plan.counted and plan.takeover == "/t-1"


def test_no_part_is_drained_before_the_plan_is_counted() -> None:
    fake = FakeCoord(plan=replace(PLAN, counts=()))
    fake.parts = {0: PartRecord((0, 0)), 1: PartRecord((0, 0))}
    moved = drain_parts(fake, "node2", replace(PLAN, counts=()), Endpoint("h", 1),  # type: ignore[arg-type]
                        by="node3", known=(), keep_going=lambda: True)  # fmt: skip
    assert moved == 0 and fake.parts == {0: PartRecord((0, 0)), 1: PartRecord((0, 0))}


def test_a_survivor_lists_while_the_claimer_counts_then_drains_from_its_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uncounted = replace(PLAN, counts=())
    fake = FakeCoord(plan=uncounted)
    listing: spreaddrain.PlanListing = [[[], []], [[], []]]

    def list_stores(stores: tuple[str, ...], parts: int) -> spreaddrain.PlanListing:
        assert (stores, parts) == (PLAN.stores, 2) and fake.plan == uncounted  # before counts
        fake.plan = PLAN  # the claimer counts meanwhile
        return listing

    monkeypatch.setattr(spreaddrain, "plan_listing", list_stores)
    assert counted(fake, "node2", uncounted, lambda: True) == (PLAN, listing)  # type: ignore[arg-type]
    assert counted(fake, "node2", PLAN, lambda: True) == (PLAN, None)  # type: ignore[arg-type]
    fake.plan, fake.owner_purpose = uncounted, None  # the claimer died before counting
    assert counted(fake, "node2", uncounted, lambda: True) is None  # type: ignore[arg-type]


def member(node: str, state: str = NodeState.SERVING, drains: bool = True) -> MemberRecord:
    return MemberRecord(node, "g", "s", 1, 2, state, drains_parts=drains)


def test_the_plan_ranks_only_live_survivors_that_drain_parts_and_the_claimer() -> None:
    old = MemberRecord.decode(member("node6").encode().replace(b'"drains_parts": true, ', b""))
    assert not old.drains_parts  # an agent older than the field: not given a part
    records = [member("node1", drains=False), member("node2"), member("node3"), old,
               member("node4", drains=False), member("node5", NodeState.RESTARTING)]  # fmt: skip
    fake = FakeCoord(records={r.node: r for r in records})
    ranked = survivors(fake, "node2", "node1")  # type: ignore[arg-type]
    assert ranked == ("node1", "node3")  # node1 claims with spread off in its own record


def test_each_survivor_tries_its_own_part_first_then_round_the_ring() -> None:
    ranked = ("node1", "node3", "node4")
    assert part_order(ranked, "node3") == [1, 2, 0]
    assert part_order(ranked, "node4") == [2, 0, 1]
    assert part_order(ranked, "operator") == [0, 1, 2]  # `store drain` keeping a plan


def test_a_resumed_part_expects_at_most_what_is_left() -> None:
    assert resumed_expected(5000, 1000, 2000) == 2000
    assert resumed_expected(5000, 4000, 2000) == 0
    assert resumed_expected(5000, 5000, 2000) == 0


def test_the_claimer_drains_until_every_part_is_done() -> None:
    fake = FakeCoord()
    fake.start_spread("node2", PLAN)
    rounds: list[int] = []

    def drain() -> None:  # another survivor finishes part 1 in the second round
        rounds.append(len(rounds))
        fake.parts[0] = PartRecord((3, 5), done=True)
        if len(rounds) == 2:
            fake.parts[1] = PartRecord((4, 6), done=True, drainers=("node3", "node1"))

    parts = wait_parts(fake, "node2", PLAN, drain, lambda: True)  # type: ignore[arg-type]
    assert rounds == [0, 1] and moved_by_parts(parts) == 18


def test_a_claimer_told_to_stop_leaves_the_plan_for_the_next() -> None:
    fake = FakeCoord()
    fake.start_spread("node2", PLAN)
    with pytest.raises(GearctlError, match="before every part was done"):
        wait_parts(fake, "node2", PLAN, lambda: None, lambda: False)  # type: ignore[arg-type]
    assert fake.plan == PLAN


def test_plan_and_part_records_round_trip() -> None:
    assert SpreadPlan.decode(PLAN.encode()) == PLAN
    part = PartRecord((1, 2), done=True, drainers=("node3", "node1"))
    assert PartRecord.decode(part.encode()) == part
