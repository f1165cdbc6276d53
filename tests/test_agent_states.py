"""The agent's state machine, driven with fakes (no process, no server): every transition of
its diagram, and the scenarios that matter for safety. Runs in well under a second."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cluster.agent.machine import AgentMachine
from cluster.agent.states import TRANSITIONS, IllegalTransition, State
from cluster.config import parse_config
from cluster.coord import (
    CoordinationError,
    CoordinationTimeout,
    MemberRecord,
    NodeState,
    Outcome,
    Owner,
    PartRecord,
    Purpose,
    SpreadPlan,
    StoreRecord,
    TakeoverRecord,
)
from cluster.endpoint import Endpoint
from cluster.errors import LaunchError, StoreError
from cluster.health import Check, Health
from cluster.metrics import AgentMetrics
from cluster.restore import RestoreIncomplete, RestoreReport
from cluster.store import StoreIdentity
from cluster.twinstore import Pending, plan_start


class FakeLease:
    def __init__(self) -> None:
        self.holder: Owner | None = None  # a drainer
        self.failing = False

    def try_acquire(self) -> Owner | None:
        if self.failing:
            raise CoordinationError("ZooKeeper: ConnectionLoss")
        return self.holder

    def acquire(self, until: Callable[[], bool]) -> bool:
        if self.failing:
            raise CoordinationError("ZooKeeper: ConnectionLoss")
        return self.holder is None  # the real one blocks until then, or until `until()`


@dataclass
class FakeCoordination:
    lease_: FakeLease = field(default_factory=FakeLease)
    written: list[MemberRecord] = field(default_factory=list)
    registrations: int = 0
    earlier_session_records: int = 0  # register() answers False this many times
    epoch: int = 0
    failing: bool = False
    stores: list[StoreRecord] = field(default_factory=list)  # describe_store's records
    plan: SpreadPlan | None = None  # a spread plan of our store, and its parts and record
    parts: dict[int, PartRecord] = field(default_factory=dict)
    takeovers: dict[str, TakeoverRecord] = field(default_factory=dict)

    def spread_plan(self, _store: str) -> SpreadPlan | None:
        return self.plan

    def spread_part(self, _store: str, index: int) -> PartRecord | None:
        return self.parts.get(index)

    def end_spread(self, _store: str) -> None:
        self.plan, self.parts = None, {}

    def takeover_at(self, path: str) -> TakeoverRecord | None:
        return self.takeovers.get(path)

    def update_takeover(self, path: str, takeover: TakeoverRecord) -> None:
        self.takeovers[path] = takeover

    def lease(self, _store: str, _node: str, _purpose: Purpose) -> FakeLease:
        return self.lease_

    def register(self, record: MemberRecord) -> bool:
        if self.earlier_session_records:
            self.earlier_session_records -= 1
            return False
        self.registrations += 1
        self.written.append(record)
        return True

    def update_member(self, record: MemberRecord) -> None:
        self.written.append(record)

    def next_epoch(self, _store: str) -> int:
        if self.failing:
            raise CoordinationError("ZooKeeper: ConnectionLoss")
        self.epoch += 1
        return self.epoch

    def describe_store(self, _store: str, record: StoreRecord) -> None:
        self.stores.append(record)

    def store_record(self, _store: str) -> StoreRecord | None:
        return self.stores[-1] if self.stores else None

    def members(self) -> dict[str, MemberRecord]:
        return {}  # no peer to send refused jobs to

    @property
    def states(self) -> list[str]:
        return [record.state for record in self.written]


class FakeGearmand:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeHangWatch:
    """Health checks during a restore: `ok()` answers from `answers`, then its last answer
    (the real one checks once per interval and answers the same in between)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.failures = 0
        self.last = Health.SERVING

    def ok(self) -> bool:
        healthy = self.answers.pop(0) if self.answers else self.last is Health.SERVING
        self.last = Health.SERVING if healthy else Health.UNRESPONSIVE
        self.failures = 0 if healthy else self.failures + 1
        return healthy


class FakeLauncher:
    def __init__(self) -> None:
        self.restore_checks: list[bool] = []  # answers of the hang watch during a restore
        self.started: list[str] = []
        self.wrote: list[Endpoint] = []  # the store of each start
        self.proc: FakeGearmand | None = None
        self.health: list[Health] = []  # answers of check(), then SERVING
        self.writes = True
        self.fail_start = False
        self.fenced = False
        self.killed = 0

    def start(self, prefix: str, store: Endpoint) -> FakeGearmand | None:
        if self.fenced:
            return None
        if self.fail_start:
            raise LaunchError("gearmand exited at once (status 1)")
        self.started.append(prefix)
        self.wrote.append(store)
        self.proc = FakeGearmand(1000 + len(self.started))
        return self.proc

    def check(self, proc: FakeGearmand) -> Check:
        health = self.health.pop(0) if self.health else Health.SERVING
        if health is Health.GONE:
            proc.returncode = -9
        return Check(health, ("resize",) if health is Health.SERVING else ())

    def hang_watch(self, _proc: FakeGearmand) -> FakeHangWatch:
        return FakeHangWatch(self.restore_checks)

    def writes_store(self) -> bool:
        return self.writes

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.returncode = -9 if kill else 0
            self.killed += kill
        self.proc = None

    def fence(self) -> None:
        self.fenced = True
        self.stop(kill=True)

    def unfence(self) -> None:
        self.fenced = False


class FakeStore:
    def __init__(self, items: int = 3, pid: int = 500) -> None:
        self.items: int | Exception = items
        self.answers: list[bool] = []  # does it answer `stats`? then True
        self.silent = 0  # requests (count or identity) it leaves unanswered, from now on
        self.pid = pid  # memcached's

    def _ask(self) -> None:
        if self.silent:
            self.silent -= 1
            raise StoreError("store 127.0.0.1:11212: timed out")

    def curr_items(self) -> int:
        self._ask()
        if isinstance(self.items, Exception):
            raise self.items
        return self.items

    def identity(self) -> StoreIdentity:
        self._ask()
        if self.answers and not self.answers.pop(0):
            raise StoreError("store 127.0.0.1:11211: connection refused")
        return StoreIdentity(self.pid, 1000.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float, _event: object) -> None:
        self.waits.append(seconds)
        self.now += seconds


@dataclass
class Node:
    agent: AgentMachine
    coord: FakeCoordination
    launcher: FakeLauncher
    store: FakeStore
    clock: FakeClock
    restores: list[Callable[..., RestoreReport]]
    published: list[tuple[str, ...]]

    def to(self, state: State) -> None:
        """Put the agent in `state` as if it got there by the diagram."""
        self.agent.state = state
        self.agent.registered = True
        self.agent.to_restore = {self.agent.config.store: 3}
        self.agent.start_plan = plan_start((self.agent.config.store,), (3,))
        if state in (State.RESTORING, State.SERVING, State.STORE_LOST):
            self.agent.proc = self.launcher.start("g1_", self.agent.config.store)
        if state is State.FENCED:
            self.agent.fence("test")
            self.agent.unfence(session_was_lost=False)  # the step starts over

    def cycle(self) -> State:
        return self.agent.run_cycle()


def full_restore(_store: object, _target: object, *, expected: int, **_kw: Any) -> RestoreReport:
    return RestoreReport(expected=expected, moved=expected)


def build_node(tmp_path: Path, twin: FakeStore | None = None) -> Node:
    """An agent on fakes: one store, or twin stores (127.0.0.1:11211, `twin` on :11212)."""
    stores = {"address": "127.0.0.1:11211"} | ({"twin": "127.0.0.1:11212"} if twin else {})
    config = parse_config(
        {
            "node": {"name": "n1", "cluster": "t"},
            "gearmand": {"listen": "127.0.0.1:4730"},
            "store": stores,
            "zookeeper": {"hosts": "127.0.0.1:2181"},
            "paths": {"run_dir": str(tmp_path)},
        }
    )
    coord, launcher, store, clock = FakeCoordination(), FakeLauncher(), FakeStore(), FakeClock()
    restores: list[Callable[..., RestoreReport]] = []
    published: list[tuple[str, ...]] = []

    def restorer(*args: Any, **kwargs: Any) -> RestoreReport:
        return (restores.pop(0) if restores else full_restore)(*args, **kwargs)

    agent = AgentMachine(
        config,
        coord,
        launcher,
        store,
        twin=twin,
        metrics=AgentMetrics("n1", config.gearman, config.stores),
        known_functions=lambda: {"resize"},
        publish_functions=lambda names: (published.append(names), Counter())[1],
        restorer=restorer,
        clock=clock,  # type: ignore[arg-type]
    )
    return Node(agent, coord, launcher, store, clock, restores, published)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return build_node(tmp_path)


def run_until(node: Node, state: State, limit: int = 20) -> list[State]:
    seen = []
    while node.agent.state is not state:
        seen.append(node.cycle())
        assert len(seen) < limit, seen
    return seen


# -- every transition of the diagram -----------------------------------------------------------


def arrange(node: Node, source: State, target: State) -> None:
    """Set the fakes so that the step of `source` leads to `target`."""
    node.to(source)
    edge = (source, target)
    if target is State.STOPPED:
        node.agent.stop()
    elif target is State.FENCED:
        node.agent.fence("test")
    elif target is State.RECOVERING:
        failure = StoreError("store 127.0.0.1:11211: connection reset")
        node.coord.lease_.failing = node.coord.failing = True  # owning, waiting, launching
        node.restores.append(_raise(failure))  # restoring, and serving's retry of deferred jobs
        node.agent.record = node.agent.record.with_changes(deferred_jobs=1)
        node.agent.waiting = {node.agent.config.store: (1, 0)}
        node.launcher.writes_store = _raise(failure)  # type: ignore[method-assign]
    elif edge == (State.OWNING, State.WAITING):
        node.coord.lease_.holder = Owner("n2", Purpose.DRAIN, 7)
    elif edge == (State.COUNTING, State.STORE_UNREACHABLE):
        node.store.items = StoreError("store 127.0.0.1:11211: connection refused")
    elif edge == (State.LAUNCHING, State.FAILED):
        node.launcher.fail_start = True
    elif edge == (State.RESTORING, State.RESTARTING):
        node.restores.append(_dies_midway(node))
    elif edge == (State.SERVING, State.RESTORING):  # a pending twin answers again
        node.agent.pending = Pending(node.agent.config.store, 2000.0, None)
    elif edge == (State.SERVING, State.STORE_LOST):
        node.store.answers = [False]
    elif edge in ((State.SERVING, State.RESTARTING), (State.STORE_LOST, State.RESTARTING)):
        node.launcher.health = [Health.GONE]
    elif edge == (State.RESTARTING, State.FAILED):
        node.agent.policy.deaths.extend([0.0] * 4)  # the fifth death within the window


def _raise(exc: Exception) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fail


def _dies_midway(node: Node) -> Callable[..., RestoreReport]:
    def restorer(*_args: Any, expected: int, **_kwargs: Any) -> RestoreReport:
        assert node.launcher.proc is not None
        node.launcher.proc.returncode = -9
        raise RestoreIncomplete("gearmand closed the connection", RestoreReport(expected, 1))

    return restorer


EDGES = sorted(
    ((source, target) for source, targets in TRANSITIONS.items() for target in targets),
    key=lambda edge: (edge[0].value, edge[1].value),
)


@pytest.mark.parametrize(
    ("source", "target"), EDGES, ids=[f"{s.value}->{t.value}" for s, t in EDGES]
)
def test_every_transition_of_the_diagram(node: Node, source: State, target: State) -> None:
    arrange(node, source, target)
    assert node.cycle() is target


def test_a_transition_the_diagram_lacks_is_refused(node: Node) -> None:
    with pytest.raises(IllegalTransition, match="starting -> serving"):
        node.agent.transition(State.SERVING)
    assert node.agent.state is State.STARTING
    node.to(State.STOPPED)
    with pytest.raises(IllegalTransition):
        node.agent.transition(State.OWNING)


# -- scenarios ---------------------------------------------------------------------------------


def test_first_start_publishes_restoring_then_serving_with_a_fresh_prefix(node: Node) -> None:
    seen = run_until(node, State.SERVING)
    assert seen == [State.OWNING, State.COUNTING, State.LAUNCHING, State.RESTORING, State.SERVING]
    # the second `restoring` write carries the count of deferred jobs
    assert node.coord.states == ["starting", "restoring", "restoring", "serving"]
    assert node.launcher.started == ["g1_"]
    assert node.coord.written[-1].gearmand_pid == 1001
    assert node.agent.may_drain()


def test_lease_held_by_a_drainer_means_waiting_until_it_is_released(node: Node) -> None:
    node.coord.lease_.holder = Owner("n2", Purpose.DRAIN, 7)
    assert run_until(node, State.WAITING) == [State.OWNING, State.WAITING]
    assert node.coord.states[-1] == NodeState.WAITING
    node.coord.lease_.holder = None
    assert node.cycle() is State.COUNTING
    assert node.launcher.started == []  # nothing ran while the peer drained


def test_a_spread_plan_left_by_a_dead_claimer_ends_when_the_node_serves_again(node: Node) -> None:
    plan = SpreadPlan(("n2", "n3"), ("127.0.0.1:11211",), ((5,), (6,)), 1, "/t-1", 1.0)
    node.coord.plan, node.coord.takeovers = plan, {"/t-1": TakeoverRecord("n1", "n2", 1.0)}
    node.coord.parts = {0: PartRecord((5,), done=True, drainers=("n2",)), 1: PartRecord((2,))}
    run_until(node, State.SERVING)
    assert node.coord.plan is None and node.coord.parts == {}
    takeover = node.coord.takeovers["/t-1"]
    assert takeover.outcome is Outcome.INTERRUPTED and takeover.jobs == 7
    assert "node n1 came back" in takeover.reason


def test_store_unreachable_is_store_lost_without_gearmand_and_retried(node: Node) -> None:
    node.store.items = StoreError("store 127.0.0.1:11211: connection refused")
    run_until(node, State.STORE_UNREACHABLE)
    assert node.coord.written[-1].state == NodeState.STORE_LOST
    assert node.coord.written[-1].gearmand_pid is None
    assert node.launcher.started == []
    node.store.items = 0
    assert run_until(node, State.SERVING)[0] is State.OWNING


def test_a_lost_store_while_serving_keeps_gearmand_until_it_writes_again(node: Node) -> None:
    run_until(node, State.SERVING)
    node.store.answers = [False]
    assert node.cycle() is State.STORE_LOST
    node.store.answers = [True]
    node.launcher.writes = False  # memcached answers, gearmand does not write to it yet
    node.launcher.health = [Health.SERVING] * 3 + [Health.GONE]
    assert node.cycle() is State.RESTARTING  # gearmand died meanwhile: restart it
    assert node.coord.states[-3:] == ["serving", "store-lost", "restarting"]
    assert node.launcher.killed == 1


def test_a_crash_loop_is_failed_and_retried_at_the_longest_delay(node: Node) -> None:
    for _ in range(5):
        run_until(node, State.SERVING)
        node.launcher.health = [Health.GONE]
        node.cycle()
    assert node.agent.state is State.RESTARTING
    assert node.cycle() is State.FAILED
    assert node.coord.written[-1].state == NodeState.FAILED
    assert node.coord.written[-1].restarts == 5
    assert node.cycle() is State.OWNING
    assert node.clock.waits[-1] == node.agent.policy.max_delay


def test_a_hung_gearmand_is_killed_after_hang_checks(node: Node) -> None:
    run_until(node, State.SERVING)
    node.launcher.health = [Health.UNRESPONSIVE] * node.agent.config.hang_checks
    assert node.cycle() is State.RESTARTING
    assert node.launcher.killed == 1
    assert node.cycle() is State.OWNING
    assert run_until(node, State.SERVING)[-1] is State.SERVING
    assert node.launcher.started == ["g1_", "g2_"]


def test_a_fence_during_a_restore_never_publishes_serving(node: Node) -> None:
    def fenced_at_the_end(*_args: Any, expected: int, **_kwargs: Any) -> RestoreReport:
        node.agent.fence("no answer from ZooKeeper for 3.7s")
        return RestoreReport(expected=expected, moved=expected)

    node.restores.append(fenced_at_the_end)
    run_until(node, State.RESTORING)
    assert node.cycle() is State.FENCED
    assert "serving" not in node.coord.states
    assert node.launcher.proc is None and node.launcher.fenced
    assert node.agent.record.state == NodeState.FENCED
    assert not node.agent.may_drain()


def test_a_fence_while_starting_gearmand_starts_none(node: Node) -> None:
    run_until(node, State.LAUNCHING)
    node.launcher.fence()  # the guard's fence comes while the step runs: gearmand refused
    assert node.cycle() is State.FENCED
    assert node.launcher.started == []


def test_after_a_lost_session_the_agent_registers_again_and_serves(node: Node) -> None:
    run_until(node, State.SERVING)
    node.agent.fence("ZooKeeper session lost")
    assert node.cycle() is State.FENCED
    node.agent.unfence(session_was_lost=True)
    node.coord.earlier_session_records = 1  # the old session's record is still there
    assert node.cycle() is State.STARTING
    assert run_until(node, State.SERVING)[0] is State.OWNING
    assert node.coord.registrations == 2
    assert node.launcher.started == ["g1_", "g2_"]
    assert node.coord.states[-2:] == ["restoring", "serving"]


def test_a_fence_without_a_lost_session_keeps_the_record(node: Node) -> None:
    run_until(node, State.SERVING)
    node.agent.fence("no answer from ZooKeeper for 3.7s")
    node.cycle()
    node.agent.unfence(session_was_lost=False)
    assert node.cycle() is State.STARTING
    assert node.coord.states[-1] == "starting"
    assert node.coord.registrations == 1


def test_a_partial_restore_is_retried_with_what_is_left(node: Node) -> None:
    def partial(*_args: Any, expected: int, **_kwargs: Any) -> RestoreReport:
        raise RestoreIncomplete("1 job not found", RestoreReport(expected, moved=expected - 1))

    seen: list[int] = []

    def rest(*_args: Any, expected: int, **_kwargs: Any) -> RestoreReport:
        seen.append(expected)
        return RestoreReport(expected=expected, moved=expected)

    node.restores.extend([partial, rest])
    assert run_until(node, State.SERVING)[-1] is State.SERVING
    assert seen == [1]  # the retry asks only for what the first try left
    assert node.clock.waits == [0.5]


def test_stop_ends_the_machine_from_any_state(node: Node) -> None:
    run_until(node, State.SERVING)
    node.agent.stop()
    assert node.cycle() is State.STOPPED
    assert TRANSITIONS[State.STOPPED] == frozenset()


def test_a_fence_over_before_the_loop_saw_it_still_goes_through_fenced(node: Node) -> None:
    """The guard fences and unfences while a step blocks: the main loop still starts over
    from a stopped gearmand, and starts a new one (the launcher is not left refusing)."""
    run_until(node, State.SERVING)
    node.agent.fence("no answer from ZooKeeper for 3.7s")
    node.agent.unfence(session_was_lost=False)
    assert node.cycle() is State.FENCED
    assert node.cycle() is State.STARTING
    run_until(node, State.SERVING)
    assert node.launcher.started == ["g1_", "g2_"]
    assert not node.launcher.fenced


def test_a_fence_does_not_wait_for_a_record_write_in_flight(node: Node) -> None:
    """While ZooKeeper is cut off a member record write blocks for as long as the cut lasts;
    the guard's fence must still return (it pings the watchdog next)."""
    run_until(node, State.SERVING)
    with node.agent.lock:  # held as by a write waiting for ZooKeeper
        fencing = threading.Thread(target=node.agent.fence, args=("no answer for 3.7s",))
        fencing.start()
        fencing.join(timeout=10)
        returned = not fencing.is_alive()
    fencing.join()
    assert returned, "fence() waited for the record write's lock"
    assert node.launcher.fenced
    assert node.cycle() is State.FENCED


def test_deferred_jobs_wait_while_zookeeper_does_not_answer_and_gearmand_serves_on(
    node: Node,
) -> None:
    """Their retry needs the cluster's function names: a bounded read that times out (a cut
    from ZooKeeper) leaves them waiting; it is no reason to restart gearmand."""
    run_until(node, State.SERVING)
    node.agent.waiting = {node.agent.config.store: (1, 0)}
    node.agent.record = node.agent.record.with_changes(deferred_jobs=1)
    node.agent.known_functions = _raise(CoordinationTimeout("ZooKeeper did not answer in 2s"))
    node.restores.append(_raise(AssertionError("no restore without function names")))
    node.launcher.health = [Health.SERVING] * 3 + [Health.GONE]
    assert node.cycle() is State.RESTARTING  # served until gearmand died, not RECOVERING
    assert node.launcher.killed == 1 and node.restores  # killed once, by the death


def test_a_second_fence_while_fenced_waits_for_its_own_unfence(node: Node) -> None:
    run_until(node, State.SERVING)
    node.agent.fence("first")
    node.cycle()
    node.agent.unfence(session_was_lost=False)
    node.agent.fence("second")  # before the main loop took the first unfence
    node.clock.wait = lambda _s, _e: node.agent.stop()  # type: ignore[method-assign]
    assert node.cycle() is State.STOPPED  # it waited (and was stopped), never unfenced
    assert node.launcher.fenced


def test_a_fence_right_after_the_unfence_keeps_the_agent_fenced(node: Node) -> None:
    run_until(node, State.SERVING)
    node.agent.fence("first")
    node.cycle()
    node.agent.unfence(session_was_lost=False)
    step = node.agent.steps[State.FENCED]

    def unfenced_then_fenced_again() -> State:
        target = step()
        node.agent.fence("second")  # between the step and its transition
        return target

    node.agent.steps[State.FENCED] = unfenced_then_fenced_again
    assert node.cycle() is State.FENCED
    assert node.agent.fenced.is_set() and node.coord.states[-1] == "serving"


def test_a_store_restarted_between_two_checks_is_store_lost(node: Node) -> None:
    """It answers again, but empty: gearmand's queue in memory is the only copy now."""
    run_until(node, State.SERVING)
    node.launcher.health = [Health.SERVING]
    node.store.answers = [True, True]
    original = node.agent._wait  # one check with the first memcached, then a new one

    def restart_store(seconds: float) -> None:
        node.store.pid = 501
        original(seconds)

    node.agent._wait = restart_store  # type: ignore[method-assign]
    assert node.cycle() is State.STORE_LOST
    assert node.coord.states[-1] == "store-lost"
    assert node.launcher.killed == 0  # gearmand keeps running


def test_a_gearmand_hung_during_the_restore_is_killed_and_restarted(node: Node) -> None:
    def stopped_by_the_watch(*_args: Any, expected: int, **kwargs: Any) -> RestoreReport:
        assert not kwargs["should_continue"]()  # the hang watch says no
        raise RestoreIncomplete("stopped", RestoreReport(expected, moved=0))

    node.restores.append(stopped_by_the_watch)
    node.launcher.restore_checks = [False]
    run_until(node, State.RESTORING)
    assert node.cycle() is State.RESTARTING
    assert node.launcher.killed == 1
    assert "serving" not in node.coord.states


# -- twin stores ---------------------------------------------------------------------------------

A = Endpoint("127.0.0.1", 11211)  # config.store
B = Endpoint("127.0.0.1", 11212)  # config.twin


@dataclass
class Twins:
    """An agent with twin stores; its restorer moves jobs as gearmand would: out of the store it
    reads, into the twin the running gearmand writes (`lose_after`: gearmand dies after that
    many jobs of the next restore)."""

    node: Node
    stores: dict[Endpoint, FakeStore]
    calls: list[tuple[Endpoint, int, str]] = field(default_factory=list)  # store, expected, keep
    lose_after: int | None = None

    def restorer(self, source: FakeStore, _target: object, *, expected: int, keep_prefix: str,
                 **_kw: Any) -> RestoreReport:  # fmt: skip
        address = next(a for a, s in self.stores.items() if s is source)
        self.calls.append((address, expected, keep_prefix))
        moving = expected if self.lose_after is None else min(expected, self.lose_after)
        assert isinstance(source.items, int)
        source.items -= moving
        written = self.stores[self.node.launcher.wrote[-1]]
        assert isinstance(written.items, int)
        written.items += moving
        if moving < expected:
            self.lose_after = None
            assert self.node.launcher.proc is not None
            self.node.launcher.proc.returncode = -9
            raise RestoreIncomplete(
                "gearmand closed the connection", RestoreReport(expected, moving)
            )
        return RestoreReport(expected=expected, moved=expected)

    @property
    def items(self) -> tuple[int | Exception, int | Exception]:
        return self.stores[A].items, self.stores[B].items


@pytest.fixture
def twins(tmp_path: Path) -> Twins:
    node = build_node(tmp_path, twin=FakeStore(items=0, pid=600))
    node.store.items = 100
    twins = Twins(node, {A: node.store, B: node.agent.stores[B]})
    node.agent.restorer = twins.restorer
    return twins


def crash_and_serve_again(node: Node) -> None:
    node.launcher.health = [Health.GONE]
    assert node.cycle() is State.RESTARTING
    run_until(node, State.SERVING)


def test_twins_the_empty_twin_serves_and_the_full_one_is_restored(twins: Twins) -> None:
    node = twins.node
    run_until(node, State.SERVING)
    assert node.launcher.wrote == [B]
    assert twins.calls == [(A, 100, "g1_")]
    assert twins.items == (0, 100)
    assert node.coord.stores[-1].addresses == (str(B), str(A))  # address = B, twin = A
    assert node.coord.written[-1].store == str(B)  # the member record: the twin written now
    crash_and_serve_again(node)  # the next gearmand takes the other twin, now empty
    assert node.launcher.wrote == [B, A]
    assert twins.calls[-1] == (B, 100, "g2_")
    assert twins.items == (100, 0)
    assert (node.coord.stores[-1].address, node.coord.stores[-1].twin) == (str(A), str(B))


def test_twins_a_crash_mid_restore_leaves_jobs_in_both_and_the_next_start_restores_all(
    twins: Twins,
) -> None:
    node = twins.node
    twins.lose_after = 40
    run_until(node, State.RESTORING)
    assert node.cycle() is State.RESTARTING  # gearmand died after 40 of the 100 jobs
    assert twins.items == (60, 40)
    run_until(node, State.SERVING)
    # the smaller twin (B: it walks 40 items) serves; both are restored, the other one first
    assert node.launcher.wrote == [B, B]
    assert twins.calls[1:] == [(A, 60, "g2_"), (B, 40, "g2_")]
    assert twins.items == (0, 100)
    assert node.agent.record.state == NodeState.SERVING


def lost_restarted(node: Node) -> float | None:
    registry = node.agent.metrics.registry
    return registry.get_sample_value("gearctl_store_lost_total", {"node": "n1", "how": "restarted"})


def pending_gauge(node: Node, store: Endpoint) -> float | None:
    registry = node.agent.metrics.registry
    return registry.get_sample_value("gearctl_store_pending", {"node": "n1", "store": str(store)})


def test_twins_a_silent_twin_is_pending_and_restored_once_when_it_answers(twins: Twins) -> None:
    node = twins.node
    twins.stores[A].silent = 3  # the count, then two asks while gearmand serves
    run_until(node, State.SERVING)
    assert node.launcher.wrote == [B]  # the answering twin serves at once
    assert twins.calls == []  # nothing to restore from B; A's 100 jobs wait
    record = node.coord.stores[-1]
    assert (record.address, record.twin, record.pending) == (str(B), str(A), str(A))
    assert pending_gauge(node, A) == 1
    assert node.cycle() is State.RESTORING  # A answers at the third ask
    assert node.cycle() is State.SERVING
    assert twins.calls == [(A, 100, "g1_")]  # once, into the running gearmand
    assert twins.items == (0, 100)
    assert node.coord.stores[-1].pending is None
    assert pending_gauge(node, A) == 0
    states = node.coord.states
    shown = [state for i, state in enumerate(states) if state != states[i - 1]]
    assert shown[-3:] == ["serving", "restoring", "serving"]
    assert lost_restarted(node) == 0
    node.launcher.health = [Health.SERVING] * 20 + [Health.GONE]
    assert node.cycle() is State.RESTARTING  # no second restore while it serves on
    assert twins.calls == [(A, 100, "g1_")]


def test_twins_a_pending_twin_that_answers_at_the_next_start_is_counted_with_the_other(
    twins: Twins,
) -> None:
    node = twins.node
    twins.stores[A].silent = 1
    run_until(node, State.SERVING)
    twins.stores[A].silent = 100  # silent on; gearmand dies
    node.launcher.health = [Health.GONE]
    assert node.cycle() is State.RESTARTING
    twins.stores[A].silent = 0
    run_until(node, State.SERVING)
    assert node.launcher.wrote == [B, B]  # A's 100 against B's 0: B again, A restored once
    assert twins.calls == [(A, 100, "g2_")]
    assert node.agent.pending is None
    assert node.coord.stores[-1].pending is None


def test_twins_a_twin_back_restarted_is_logged_lost_and_counted(
    twins: Twins, caplog: pytest.LogCaptureFixture
) -> None:
    node = twins.node
    run_until(node, State.SERVING)  # on B, A restored into it
    crash_and_serve_again(node)  # on A (memcached pid 500, seen by the store checks)
    assert node.launcher.wrote == [B, A]
    node.launcher.health = [Health.SERVING, Health.GONE]
    assert node.cycle() is State.RESTARTING
    twins.stores[A].silent = 1000
    run_until(node, State.SERVING)  # A silent: B serves, walks and restores its own 100
    assert node.launcher.wrote[-1] == B
    twins.stores[A].silent, twins.stores[A].pid, twins.stores[A].items = 0, 501, 0
    assert node.cycle() is State.RESTORING
    assert "twin store 127.0.0.1:11211 is LOST" in caplog.text
    assert lost_restarted(node) == 1
    assert node.cycle() is State.SERVING


def test_twins_a_twin_pending_before_the_agent_restarted_keeps_its_silence_start(
    twins: Twins, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier agent of the node recorded the twin pending since t=500; this one finds it
    silent too, and when it answers as a memcached started at t=1000, it restarted meanwhile."""
    node = twins.node
    earlier = StoreRecord("127.0.0.1:11212", "127.0.0.1:4730", "h", 99, twin=str(A))
    node.coord.stores.append(earlier.with_pending(str(A), 500.0))
    twins.stores[A].silent = 2
    run_until(node, State.SERVING)
    assert node.coord.stores[-1].pending_since == 500.0
    assert node.cycle() is State.RESTORING
    assert "twin store 127.0.0.1:11211 is LOST" in caplog.text


def test_twins_with_neither_twin_answering_no_gearmand_starts(twins: Twins) -> None:
    node = twins.node
    twins.stores[A].silent = twins.stores[B].silent = 1
    run_until(node, State.STORE_UNREACHABLE)
    assert node.launcher.started == []
    run_until(node, State.SERVING)
    assert twins.calls == [(A, 100, "g1_")]


def test_twins_the_store_checks_follow_the_twin_gearmand_writes(twins: Twins) -> None:
    node = twins.node
    run_until(node, State.SERVING)  # gearmand writes B (memcached pid 600)
    twins.stores[A].answers = [False] * 10  # the idle twin down: nothing to do with gearmand
    node.launcher.health = [Health.SERVING] * 3 + [Health.GONE]
    assert node.cycle() is State.RESTARTING  # not store-lost
    twins.stores[A].answers = []
    run_until(node, State.SERVING)  # now on A (pid 500): not taken for a restarted memcached
    node.launcher.health = [Health.SERVING] * 3 + [Health.GONE]
    assert node.cycle() is State.RESTARTING
    run_until(node, State.SERVING)  # on B again
    twins.stores[B].answers = [False]
    assert node.cycle() is State.STORE_LOST
    assert "store-lost" in node.coord.states


def test_twins_deferred_jobs_are_retried_from_the_twin_that_holds_them(twins: Twins) -> None:
    node = twins.node
    tried: list[tuple[Endpoint, int]] = []

    def defers_two(source: FakeStore, _t: object, *, expected: int, **_kw: Any) -> RestoreReport:
        tried.append((A if source is twins.stores[A] else B, expected))
        return RestoreReport(expected=expected, moved=expected - 2, deferred=2)

    def moves_them(source: FakeStore, _t: object, *, expected: int, **_kw: Any) -> RestoreReport:
        tried.append((A if source is twins.stores[A] else B, expected))
        return RestoreReport(expected=expected, moved=expected)

    node.agent.restorer = defers_two
    run_until(node, State.SERVING)
    assert node.coord.written[-2].deferred_jobs == 2
    node.agent.restorer = moves_them
    node.launcher.health = [Health.SERVING] * 2 + [Health.GONE]
    assert node.cycle() is State.RESTARTING
    assert tried == [(A, 100), (A, 2)]  # the two waited in A, not in the twin gearmand writes
    assert any(r.deferred_jobs == 0 and r.state == "serving" for r in node.coord.written[-3:])
