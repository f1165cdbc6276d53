"""The spread take-over (issue 18) with real ZooKeeper, memcached and two gearmands: a dead
node's twin stores spread over two survivors, every job exactly once and within 10% of evenly;
a part drainer killed mid-part leaves its part to the other, nothing lost, duplicates within
one batch (the kill-drainer bound)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import coord, spreaddrain
from cluster.claim import Drained, claim_and_drain, drain_order
from cluster.coord import (
    MemberRecord,
    NodeState,
    Outcome,
    PartRecord,
    Purpose,
    SpreadPlan,
    StoreRecord,
    TakeoverRecord,
)
from cluster.drill.workload import FUNCTIONS, Job, numbered_jobs
from cluster.endpoint import Endpoint
from cluster.process import kill_pid, wait_until
from cluster.restore import BATCH
from cluster.store import Store
from tests.conftest import running_memcached
from tests.test_restore import queued, started_gearmand
from tests.test_takeover_twins import uniques_in
from tests.twinstores import persist

pytestmark = pytest.mark.integration

HALF = 3000  # jobs in each twin store of the dead node2


@dataclass
class Scene:
    """Dead node2 (twin stores), and survivors node1 and node3, each with its own gearmand."""

    record: StoreRecord
    jobs: list[Job]
    targets: dict[str, Endpoint]  # survivor -> its gearmand
    stores: dict[str, Endpoint]  # survivor -> its gearmand's store
    cluster: str


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    jobs = numbered_jobs(2 * HALF, prefix="spread")
    with ExitStack() as stack:
        twin = stack.enter_context(running_memcached(tmp_path, "twin"))
        store = stack.enter_context(running_memcached(tmp_path, "store"))
        persist(twin, "g1_", jobs[:HALF], tmp_path)
        dead = persist(store, "g2_", jobs[HALF:], tmp_path)
        targets, stores = {}, {}
        for node in ("node1", "node3"):
            stores[node] = stack.enter_context(running_memcached(tmp_path, f"{node}-store"))
            directory = tmp_path / node
            directory.mkdir()
            targets[node], _ = stack.enter_context(
                started_gearmand(stores[node], "g5_", directory))  # fmt: skip
        record = StoreRecord(str(store), str(dead), "h", None, twin=str(twin))
        yield Scene(record, jobs, targets, stores, f"spread-{uuid.uuid4().hex[:8]}")


def claim(
    session: coord.Coordination, scene: Scene, keep_going: Callable[[], bool] = lambda: True
) -> Drained:
    """node1 claims dead node2's stores and spreads them (the survivors: node1 and node3)."""
    for node, target in scene.targets.items():
        session.register(MemberRecord(node, str(target), "s", 1, 2, NodeState.SERVING,
                                      drains_parts=True))  # fmt: skip
    return claim_and_drain(session, "node2", scene.record, scene.targets["node1"], by="node1",
                           known=lambda: set(FUNCTIONS), keep_going=keep_going,
                           spread=True)  # fmt: skip


def stored_uniques(scene: Scene) -> Counter[str]:
    """Every job the survivors' gearmands re-persisted, by unique (a job queued twice: 2)."""
    return uniques_in(scene.stores["node1"]) + uniques_in(scene.stores["node3"])


def test_two_survivors_drain_their_parts_each_job_once_evenly(
    scene: Scene, zookeeper: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gearctl.takeover")
    with (
        coord.session(str(zookeeper), scene.cluster) as node1,
        coord.session(str(zookeeper), scene.cluster) as node3,
    ):
        helped: list[int] = []

        def help_as_node3() -> None:
            wait_until(lambda: node3.spread_plan("node2") is not None, timeout=60, what="plan")
            plan = node3.spread_plan("node2")
            assert plan is not None
            ready = spreaddrain.counted(node3, "node2", plan, lambda: True)
            assert ready is not None
            plan, listed = ready
            helped.append(spreaddrain.drain_parts(
                node3, "node2", plan, scene.targets["node3"], by="node3", known=set(FUNCTIONS),
                keep_going=lambda: True, listed=listed))  # fmt: skip

        helper = threading.Thread(target=help_as_node3)
        helper.start()
        drained = claim(node1, scene)
        helper.join(120)
        assert not helper.is_alive(), "node3's part drains did not end"
        assert node1.spread_plan("node2") is None and node1.owner("node2") is None
        (history,) = node1.takeover_history()
    assert drained.takeover.outcome is Outcome.DONE
    assert drained.takeover.jobs == history.jobs == len(scene.jobs)
    assert [Store(Endpoint.parse(a)).curr_items() for a in scene.record.addresses] == [0, 0]
    assert stored_uniques(scene) == Counter(job.unique for job in scene.jobs)  # each once
    per_survivor = [sum(queued(scene.targets[n]).values()) for n in ("node1", "node3")]
    assert sum(per_survivor) == len(scene.jobs)
    assert [drained.here, *helped] == per_survivor  # each survivor's drained-jobs metric
    assert [(p.part, p.drainers, p.done) for p in history.parts] == [
        (0, ("node1",), True), (1, ("node3",), True)]  # fmt: skip
    assert sum(p.jobs for p in history.parts) == len(scene.jobs)  # nothing left to sweep
    assert max(per_survivor) <= 1.1 * len(scene.jobs) / 2, per_survivor  # within 10% of even
    # The claimer drains its part from its plan-time listing, made while node3 made its own.
    assert "draining part 0 of 2 from its plan-time listing" in caplog.text


def test_a_plan_its_claimer_left_uncounted_is_counted_by_the_next(
    scene: Scene, zookeeper: Endpoint
) -> None:
    with coord.session(str(zookeeper), scene.cluster) as node1:
        epoch = node1.epoch("node2")
        path = node1.record_takeover(TakeoverRecord(store="node2", by="node3", started=1.0))
        left = SpreadPlan(("node1", "node3"), drain_order(scene.record), (), epoch and epoch[0],
                          path, 1.0)  # fmt: skip
        node1.zk.ensure_path(f"{node1.paths.stores}/node2")  # as node3's claim made it
        node1.start_spread("node2", left)  # step one, then node3 died
        drained = claim(node1, scene)
        assert node1.spread_plan("node2") is None
        (history,) = node1.takeover_history()
    assert drained.takeover.outcome is Outcome.DONE and history.jobs == len(scene.jobs)
    assert [Store(Endpoint.parse(a)).curr_items() for a in scene.record.addresses] == [0, 0]
    assert stored_uniques(scene) == Counter(job.unique for job in scene.jobs)  # each once


def test_a_killed_part_drainer_leaves_its_part_to_the_other(
    scene: Scene, zookeeper: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gearctl.takeover")
    argv = [sys.executable, "-m", "tests.spread_drainer", str(zookeeper), scene.cluster,
            str(scene.targets["node3"]), "30"]  # fmt: skip
    drainer = subprocess.Popen(argv, cwd=Path(__file__).parent.parent, env=os.environ.copy())
    try:
        with coord.session(str(zookeeper), scene.cluster) as node1:
            result: list[Drained] = []
            part1 = node1.paths.store_part_owner("node2", 1)
            waited: list[bool] = []

            def after_node3_took_part1() -> bool:  # however slowly the drainer process starts
                if not waited:
                    wait_until(lambda: node1.owner_at(part1) is not None, timeout=60,
                               what="node3 holding part 1")  # fmt: skip
                    waited.append(True)
                return True

            claimer = threading.Thread(
                target=lambda: result.append(claim(node1, scene, after_node3_took_part1))
            )
            claimer.start()

            def part1_moving() -> bool:
                record = node1.spread_part("node2", 1)
                return record is not None and sum(record.moved) > 0

            wait_until(part1_moving, timeout=60, what="node3 draining part 1")
            kill_pid(drainer.pid)  # mid-part: between chunks, deletes maybe in flight
            drainer.wait()
            claimer.join(180)
            assert not claimer.is_alive()
            assert node1.spread_plan("node2") is None
    finally:
        if drainer.poll() is None:
            kill_pid(drainer.pid)
            drainer.wait()
    (drained,) = result
    assert drained.takeover.outcome is Outcome.DONE
    assert "draining part 1 of 2 (resumed after node3)" in caplog.text
    assert [Store(Endpoint.parse(a)).curr_items() for a in scene.record.addresses] == [0, 0]
    stored = stored_uniques(scene)
    assert set(stored) == {job.unique for job in scene.jobs}  # nothing lost
    assert sum(stored.values()) - len(scene.jobs) <= BATCH  # duplicates: at most one batch


def test_a_node_back_before_the_parts_are_done_ends_the_dead_claimers_plan(
    zookeeper: Endpoint,
) -> None:
    """node1 planned node2's spread and died with part 1 held by node3 mid-part; node2 comes
    back (holding its store for serving): the plan, the parts and their leases go, and the
    take-over record says interrupted with the jobs the parts moved."""
    cluster = f"stale-{uuid.uuid4().hex[:8]}"
    with coord.session(str(zookeeper), cluster) as node3:
        with coord.session(str(zookeeper), cluster) as node1:
            node1.describe_store("node2", StoreRecord("h:1", "h:2", "h", None))
            path = node1.record_takeover(TakeoverRecord("node2", "node1", 1.0))
            plan = SpreadPlan(("node1", "node3"), ("h:1",), ((4,), (6,)), 1, path, 1.0)
            node1.start_spread("node2", plan)
            node1.update_part("node2", 0, PartRecord((4,), done=True, drainers=("node1",)))
        part = node3.part_lease("node2", 1, "node3")
        assert part.try_acquire() is None
        node3.update_part("node2", 1, PartRecord((2,), drainers=("node3",)))
        with coord.session(str(zookeeper), cluster) as node2:
            assert node2.lease("node2", "node2", Purpose.SERVE).try_acquire() is None
            assert spreaddrain.end_stale(node2.bounded(5.0), "node2") == plan
            assert node2.spread_plan("node2") is None and node2.spread_stores() == []
            assert node2.owner_at(node2.paths.store_part_owner("node2", 1)) is None
            assert spreaddrain.end_stale(node2, "node2") is None  # once
            (takeover,) = node2.takeover_history()
    assert takeover.outcome is Outcome.INTERRUPTED and takeover.jobs == 6
    assert "node node2 came back" in takeover.reason
