"""The node agent as a state machine: keeps one gearmand serving the node's store, and only
while it owns the store (states and diagram: cluster.agent.states, docs/architecture.md).

With twin stores (`[store] twin`) the node has two memcached instances: each gearmand start goes
to the twin holding fewer items (cluster.twinstore), and the restore reads every twin that holds
jobs, the other one first. Health checks of the store follow the twin the gearmand writes. A
twin silent at the count is *pending*: gearmand starts on the other one, and SERVING restores the
pending twin once (serving -> restoring -> serving) when it answers again.

The main loop repeats `run_cycle`: run the current state's step, which returns the next state,
and `transition` to it. Only the main loop changes the state and writes the member record.
Other threads only signal: the session guard calls `fence` (it kills gearmand at once, since a
step may block for seconds, and marks the agent fenced) and `unfence`; SIGTERM calls `stop`.
A record write checks the fence under `lock`, so none starts once fenced. `fence` never waits
for a write in flight: while ZooKeeper is cut off a write waits up to the main loop's request
bound (`Coordination.bounded`: half a session timeout), and the guard must go on (ping the
watchdog, see the session come back). Such a write, even one that timed out, can land only
while the session it was sent on lives, so before any peer may own the store.

Every dependency is passed in (coordination, gearmand launcher, store, restore, clock), so the
unit tests (tests/test_agent_states.py) drive each transition with fakes in milliseconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from cluster import spreaddrain
from cluster.agent.states import PUBLISHED, State, check_transition
from cluster.backoff import RestartPolicy
from cluster.config import AgentConfig
from cluster.coord import MemberRecord, NodeState, Purpose, StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, LaunchError
from cluster.health import Check, HangWatch, Health
from cluster.metrics import AgentMetrics
from cluster.process import log_tail
from cluster.restore import Copies, RestoreIncomplete, RestoreReport, restore
from cluster.store import StoreIdentity
from cluster.twinstore import Pending, TwinStart, plan_start, report_back

log = logging.getLogger("gearctl.agent")

DEFERRED_RETRY_EVERY = 1.0  # seconds between tries of jobs whose function name was unknown
REFUSED_RETRY_EVERY = 30.0  # seconds between retries of jobs every gearmand refused (full store)
NAMES_WARN_EVERY = 60.0  # seconds between warnings that function names were left unpublished
PENDING_CHECK_EVERY = 1.0  # seconds between asks of a pending twin (a stopped one times out)
RESTORE_RETRY_AFTER = 0.5
RETRY_AFTER = 1.0  # after a failed step, an unreachable store, a launch failure
UNFENCE_POLL = 0.1


class Gearmand(Protocol):
    """A started gearmand process (subprocess.Popen in production)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...


class Launcher(Protocol):
    """Starts, checks, stops and fences the node's gearmand (cluster.agent.gearmand)."""

    def start(self, prefix: str, store: Endpoint) -> Gearmand | None: ...
    def check(self, proc: Any) -> Check: ...
    def hang_watch(self, proc: Any) -> HangWatch: ...
    def writes_store(self) -> bool: ...
    def stop(self, kill: bool = False) -> None: ...
    def fence(self) -> None: ...
    def unfence(self) -> None: ...


class Clock:
    """Time for the agent: monotonic seconds, and waits that end early when `event` is set."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, event: threading.Event) -> None:
        event.wait(seconds)


class AgentMachine:
    def __init__(
        self,
        config: AgentConfig,
        coord: Any,  # cluster.coord.Coordination, or a fake
        launcher: Launcher,
        store: Any,  # cluster.store.Store (curr_items, identity) of config.store, or a fake
        *,
        twin: Any = None,  # the same for config.twin (twin stores), None without one
        metrics: AgentMetrics,
        known_functions: Callable[[], set[str]],
        publish_functions: Callable[[tuple[str, ...]], Counter[str]],
        restorer: Callable[..., RestoreReport] = restore,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.coord = coord
        self.launcher = launcher
        self.stores: dict[Endpoint, Any] = {config.store: store}
        if config.twin is not None:
            assert twin is not None, "a twin store in the config needs its store"
            self.stores[config.twin] = twin
        self.writes_to = config.store  # the store the current (or last) gearmand writes
        self.metrics = metrics
        self.known_functions = known_functions
        self.publish_functions = publish_functions
        self.restorer = restorer
        self.clock = clock or Clock()
        self.lease = coord.lease(config.node, config.node, Purpose.SERVE)
        self.policy = RestartPolicy()
        self.state = State.STARTING
        self.record = MemberRecord(
            node=config.node,
            gearman=str(config.gearman),
            store=str(config.store),
            agent_pid=os.getpid(),
            gearmand_pid=None,
            state=NodeState.STARTING,
            drains_parts=config.takeover_spread,
        )
        self.registered = False
        self.stopping = threading.Event()
        self.fenced = threading.Event()  # cleared only by the main loop, in FENCED
        self.unfenced = threading.Event()  # the guard's word that the session is back
        self.session_renewed = threading.Event()
        self.interrupt = threading.Event()  # set by stop and fence: ends every wait at once
        self.lock = threading.Lock()  # record writes, and the fence check before each
        self.fence_lock = threading.Lock()  # a fence and the FENCED step's unfence
        self.proc: Gearmand | None = None
        self.store_identity: StoreIdentity | None = None  # memcached's, at the last check
        self.prefix = ""
        self.start_plan: TwinStart | None = None  # the next gearmand's store and restore
        self.store_record: StoreRecord | None = None  # the last one written
        self.pending: Pending | None = None  # a twin silent at the count: restored once back
        self.copies = Copies()  # the jobs this gearmand's restores have seen (twins: moved once)
        # Per store, jobs under older prefixes still to restore (counted while gearmand was
        # down), in restore order; and the jobs a restore left waiting (deferred, refused).
        self.to_restore: dict[Endpoint, int] = {}
        self.waiting: dict[Endpoint, tuple[int, int]] = {}
        self.reason = ""  # why the last step failed (logged on entering FAILED & co.)
        self.names_warned_at = float("-inf")
        self.steps: dict[State, Callable[[], State]] = {
            State.STARTING: self._start,
            State.OWNING: self._own,
            State.WAITING: self._wait_for_store,
            State.COUNTING: self._count,
            State.STORE_UNREACHABLE: self._retry_later,
            State.LAUNCHING: self._launch,
            State.RESTORING: self._restore,
            State.SERVING: self._serve,
            State.STORE_LOST: self._wait_store_back,
            State.RESTARTING: self._restart,
            State.FAILED: self._retry_later,
            State.RECOVERING: self._recover,
            State.FENCED: self._wait_unfenced,
        }

    # -- signals (any thread) -----------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        self.interrupt.set()

    def fence(self, reason: str) -> None:
        """The session guard's call: stop serving the store before a peer may own it.

        Marked first (so a gearmand that dies of the kill is not taken for a crash), killed at
        once (not by the main loop: a step may block for seconds). It never blocks on ZooKeeper."""
        self.fenced.set()
        self.interrupt.set()
        self.launcher.fence()
        with self.fence_lock:
            self.fenced.set()
            self.unfenced.clear()
        log.error("fenced (%s): gearmand killed", reason)

    def unfence(self, session_was_lost: bool) -> None:
        """The session guard's call once a heartbeat is answered again (the main loop, waiting
        in FENCED, then starts over)."""
        if session_was_lost:
            self.session_renewed.set()
        self.unfenced.set()

    @property
    def interrupted(self) -> bool:
        return self.stopping.is_set() or self.fenced.is_set()

    def may_drain(self) -> bool:
        """Peers' stores are drained only into a gearmand that serves, under a live session."""
        return self.state is State.SERVING and not self.fenced.is_set()

    # -- the machine ----------------------------------------------------------------------

    def run_cycle(self) -> State:
        """Run the current state's step and move to the state it returns."""
        if self.stopping.is_set():
            target = State.STOPPED
        elif self.fenced.is_set() and self.state is not State.FENCED:
            target = State.FENCED
        else:
            try:
                target = self.steps[self.state]()
            except GearctlError as exc:
                # ZooKeeper or the store went away mid-step: report, and start over from a
                # stopped gearmand (the next count of the store needs it quiescent).
                log.error("%s: %s", type(exc).__name__, exc)
                self.metrics.count_error(exc)
                target = State.RECOVERING
        self.transition(target)
        return self.state

    def transition(self, target: State) -> None:
        """Enter `target` (FENCED instead, once fenced), publishing what it shows; raises
        IllegalTransition for a transition the diagram does not have."""
        with self.lock:
            if self.fenced.is_set() and target is not State.STOPPED:
                if self.state is State.FENCED:
                    return  # fenced again before it could start over: wait again
                target = State.FENCED
            check_transition(self.state, target)
            self.state = target
            if target is State.FENCED:
                self._enter_fenced()
            elif PUBLISHED[target] is not None:
                self._publish(**self._entry_changes(target))

    def _entry_changes(self, target: State) -> dict[str, Any]:
        changes: dict[str, Any] = {"state": PUBLISHED[target]}
        if target is State.RESTORING:
            assert self.proc is not None
            changes |= {"gearmand_pid": self.proc.pid, "store": str(self.writes_to),
                        **self._waiting_totals()}  # fmt: skip
        elif target is State.RESTARTING:
            changes |= {"gearmand_pid": None, "restarts": self.record.restarts + 1}
        elif target in (State.FAILED, State.STORE_UNREACHABLE):
            changes["gearmand_pid"] = None
            tail = log_tail(self.config.log_dir / "gearmand.log", 5)
            log.error("%s\nlast lines of gearmand.log:\n%s", self.reason, tail)
        return changes

    def _publish(self, **changes: Any) -> None:
        """Change the member record and write it (the caller holds `lock`; never once fenced)."""
        self.record = self.record.with_changes(**changes)
        self.metrics.record(self.record)
        if not self.registered or self.fenced.is_set():
            return  # registering writes it; a fenced agent writes nothing
        try:
            self.coord.update_member(self.record)
        except GearctlError as exc:
            log.warning("could not update the member record: %s", exc)

    def _update(self, **changes: Any) -> None:
        with self.lock:
            self._publish(**changes)

    def _enter_fenced(self) -> None:
        self.record = self.record.with_changes(state=NodeState.FENCED, gearmand_pid=None)
        self.metrics.fenced()

    def _wait(self, seconds: float) -> None:
        self.clock.wait(seconds, self.interrupt)

    def _interrupted_state(self) -> State:
        return State.STOPPED if self.stopping.is_set() else State.FENCED

    # -- the steps: each returns the next state -------------------------------------------

    def _start(self) -> State:
        """Register our member record (again, after a lost session), waiting out one left by
        an earlier session."""
        while not self.registered:
            if self.interrupted:
                return self._interrupted_state()
            try:
                if self.coord.register(self.record):
                    self.registered = True
                    break
                log.warning("member %s still held by an earlier session; waiting", self.config.node)
                self._wait(self.config.session_timeout / 4)
            except GearctlError as exc:
                log.error("cannot register member %s: %s", self.config.node, exc)
                self._wait(RETRY_AFTER)
        return State.OWNING

    def _own(self) -> State:
        owner = self.lease.try_acquire()
        if owner is None:
            return State.COUNTING
        log.warning(
            "store %s is held by %s (%s); waiting", self.config.node, owner.node, owner.purpose
        )
        return State.WAITING

    def _wait_for_store(self) -> State:
        if self.lease.acquire(until=lambda: self.interrupted):
            return State.COUNTING
        return self._interrupted_state()

    @property
    def store(self) -> Any:
        """The store the current (or last) gearmand writes."""
        return self.stores[self.writes_to]

    def _count(self) -> State:
        """Count every store's items (no gearmand runs) and plan the start. A twin that does
        not answer is pending: gearmand starts on the other one, and the silent twin's jobs,
        left out of this count, are restored once it answers (`_pending_back`)."""
        counted = {address: self._count_store(address) for address in self.config.stores}
        if all(count is None for count in counted.values()):
            return State.STORE_UNREACHABLE
        self.start_plan = plan_start(self.config.stores, tuple(counted.values()))
        self._note_pending(self.start_plan.pending)
        restore_from = self.start_plan.restore_from
        self.to_restore = {address: counted[address] or 0 for address in restore_from}
        self.waiting = {}  # counted again: what waited is in the counts
        self.copies = Copies()
        return State.LAUNCHING

    def _count_store(self, address: Endpoint) -> int | None:
        """The store's items, or None when it does not answer. A pending twin that answers is
        checked for a restart first: the jobs it held are then gone (logged, counted)."""
        store = self.stores[address]
        try:
            if self.pending is not None and self.pending.address == address:
                self._came_back(store.identity())
            return store.curr_items()
        except GearctlError as exc:
            self.metrics.count_error(exc)
            self.reason = f"store {address} unreachable: {exc}"
            return None

    def _note_pending(self, silent: Endpoint | None) -> None:
        """Remember the twin that was silent at the count (since when, and which memcached it
        was when gearmand last wrote it, to tell a restarted one when it answers)."""
        if silent is None or self.pending is not None:
            return
        before = self.store_identity if silent == self.writes_to else None
        self.pending = Pending(silent, self._silent_since(silent), before)
        self.metrics.twin_pending(silent, True)
        log.error("twin store %s does not answer (%s): gearmand starts on its twin; its jobs "
                  "are restored once it answers", silent, self.reason)  # fmt: skip

    def _silent_since(self, silent: Endpoint) -> float:
        """When `silent` went silent: now, or when the store record says, if an earlier agent
        of this node (or a survivor's take-over) found it pending already."""
        if self.store_record is None:  # this agent wrote none yet: it may have restarted
            try:
                record = self.coord.store_record(self.config.node)
            except (GearctlError, ValueError, KeyError):
                record = None
            if record is not None and record.pending == str(silent) and record.pending_since:
                return record.pending_since
        return time.time()

    def _came_back(self, identity: StoreIdentity) -> None:
        """The pending twin answers again: its jobs are restored now, or were lost with a
        memcached restarted while it was silent (never silently)."""
        pending = self.pending
        assert pending is not None
        self.pending = None
        self.metrics.twin_pending(pending.address, False)
        if report_back(
            pending.address, identity, pending.before, pending.since, "restoring its jobs"
        ):
            self.metrics.store_lost("restarted")

    def _retry_later(self) -> State:
        delay = self.policy.max_delay if self.policy.crash_looping else RETRY_AFTER
        self._wait(delay if self.state is State.FAILED else RETRY_AFTER)
        return State.OWNING

    def _launch(self) -> State:
        plan = self.start_plan
        assert plan is not None
        epoch = self.coord.next_epoch(self.config.node)
        self.prefix = f"g{epoch}_"
        self._end_stale_spread()
        if plan.walk and self.config.twin is not None:
            why = "its twin is silent" if plan.pending else "a restore was interrupted"
            log.warning("gearmand walks the %d items of %s before it serves (%s)", plan.walk,
                        plan.serve, why)  # fmt: skip
        try:
            proc = self.launcher.start(self.prefix, plan.serve)
        except LaunchError as exc:
            self.reason = str(exc)
            return State.FAILED
        if proc is None:
            return self._interrupted_state()  # fenced while starting
        self.proc = proc
        if plan.serve != self.writes_to:
            self.writes_to, self.store_identity = plan.serve, None  # another memcached
        others = [str(address) for address in self.config.stores if address != plan.serve]
        record = StoreRecord.here(str(plan.serve), str(self.config.gearman), proc.pid,
                                  twin=others[0] if others else None)  # fmt: skip
        if self.pending is not None:
            record = record.with_pending(str(self.pending.address), self.pending.since)
        self.coord.describe_store(self.config.node, record)
        self.store_record = record
        return State.RESTORING

    def _end_stale_spread(self) -> None:
        """A spread plan of our store, left by a claimer that died, ends now that we hold the
        store for serving; a failure to end it only leaves it to the next claimer to drop."""
        try:
            spreaddrain.end_stale(self.coord, self.config.node)
        except GearctlError as exc:
            log.warning("could not end the spread plan left on our store: %s", exc)

    def _restore(self) -> State:
        """Restore from each store holding old jobs, in turn, until every old job is back (but
        deferred and refused ones)."""
        assert self.proc is not None
        watch = self.launcher.hang_watch(self.proc)  # gearmand is checked while it restores too
        for address in self.to_restore:
            while self.to_restore[address]:
                expected = self.to_restore[address]
                log.info("restoring %d stored jobs from %s", expected, address)
                try:
                    report = self.restorer(
                        self.stores[address],
                        self.config.gearman,
                        expected=expected,
                        keep_prefix=self.prefix,
                        known_functions=self.known_functions(),
                        progress=_log_progress,
                        should_continue=lambda: not self.interrupted and watch.ok(),
                        overflow=self._peers_serving,
                        copies=self.copies,  # a job in both twins (a crash left it) moves once
                    )
                except RestoreIncomplete as exc:
                    log.error("%s", exc)
                    if self.proc.poll() is not None:
                        return self._gearmand_gone(f"died (status {self.proc.returncode})")
                    if self.interrupted:
                        return self._interrupted_state()
                    if not watch.ok():
                        return self._gearmand_gone(
                            f"is {watch.last.value} during the restore after {watch.failures} "
                            "checks; killing it"
                        )
                    self.to_restore[address] = exc.report.left_in_store
                    self.metrics.moved(exc.report.moved)
                    self._wait(RESTORE_RETRY_AFTER)
                    continue
                log.info(
                    "restored %d jobs from %s in %.3fs (%d skipped, %d deferred, %d refused, "
                    "%d to other nodes)",
                    report.moved,
                    address,
                    report.seconds,
                    len(report.skipped),
                    report.deferred,
                    len(report.refused),
                    report.overflowed,
                )
                self.metrics.restored(report)
                self.to_restore[address] = 0
                self._left_waiting(address, report)
        self._describe_pending()
        return State.SERVING

    def _describe_pending(self) -> None:
        """Keep the store record's `pending` true once a pending twin is restored (`cluster
        status` shows it; peers drain both twins whatever it says)."""
        record = self.store_record
        if record is None or record.pending is None or self.pending is not None:
            return
        try:
            self.coord.describe_store(self.config.node, record.with_pending(None))
        except GearctlError as exc:
            log.warning("could not clear the pending twin in the store record: %s", exc)
            return
        self.store_record = record.with_pending(None)

    def _serve(self) -> State:
        """Health-check gearmand until it dies or hangs, or the store stops answering."""
        failures = 0
        retry_deferred_at = pending_check_at = 0.0
        while not self.interrupted:
            failures, gone = self._check_gearmand(failures)
            if gone:
                return gone
            lost = self._store_lost()
            if lost is not None:  # gearmand keeps its queue in memory: never restart it
                how, why = lost
                log.error(
                    "store %s %s: gearmand keeps its queued jobs in memory but cannot "
                    "persist new ones; waiting for the store",
                    self.writes_to,
                    why,
                )
                self.metrics.store_lost(how)
                return State.STORE_LOST
            if self.pending is not None and self.clock.monotonic() >= pending_check_at:
                if self._pending_back():
                    return State.RESTORING
                pending_check_at = self.clock.monotonic() + PENDING_CHECK_EVERY
            waiting = self.record.deferred_jobs + self.record.refused_jobs
            if waiting and self.clock.monotonic() >= retry_deferred_at:
                self._restore_deferred()
                every = DEFERRED_RETRY_EVERY if self.record.deferred_jobs else REFUSED_RETRY_EVERY
                retry_deferred_at = self.clock.monotonic() + every
            self._wait(self.config.check_interval)
        return self._interrupted_state()

    def _wait_store_back(self) -> State:
        """`store-lost`: gearmand outlives its store: it keeps the queued jobs in memory but
        refuses new background jobs (QUEUE_ERROR), and a worker's WORK_COMPLETE re-queues the
        job (its key cannot be deleted). `store-lost` takes the node off the live servers, so
        clients and workers that follow them go elsewhere; it is `serving` again once gearmand
        writes to the store again (cluster.storeprobe), which memcached answering does not yet
        mean."""
        failures = 0
        while not self.interrupted:
            failures, gone = self._check_gearmand(failures)
            if gone:
                return gone
            if self._store_lost() is None and self.launcher.writes_store():
                log.warning(
                    "store %s is back (empty if it was restarted): gearmand writes to it again",
                    self.writes_to,
                )
                return State.SERVING
            self._wait(self.config.check_interval)
        return self._interrupted_state()

    def _pending_back(self) -> bool:
        """Does the pending twin answer again? Then its jobs are the next restore's (counted
        now: nothing writes that twin, gearmand writes the other one)."""
        assert self.pending is not None
        address = self.pending.address
        store = self.stores[address]
        try:
            identity = store.identity()
            count = store.curr_items()
        except GearctlError:
            return False
        self._came_back(identity)
        self.to_restore = {address: count}
        return True

    def _store_lost(self) -> tuple[str, str] | None:
        """(how, why) when the store does not answer, or answers as another memcached than at
        the last check (it restarted in between: empty, though it answers); None if fine."""
        try:
            identity = self.store.identity()
        except GearctlError as exc:
            return "down", f"lost ({exc})"
        previous, self.store_identity = self.store_identity, identity
        if previous is not None and identity.restarted_since(previous):
            return "restarted", (
                f"restarted between two checks (memcached pid {previous.pid} "
                f"-> {identity.pid}): it is empty"
            )
        return None

    def _check_gearmand(self, failures: int) -> tuple[int, State | None]:
        """One health check: (failed checks in a row, RESTARTING if gearmand is gone or hung)."""
        assert self.proc is not None
        check = self.launcher.check(self.proc)
        if check.health is Health.GONE:
            return failures, self._gearmand_gone(f"died (status {self.proc.poll()})")
        failures = 0 if check.health is Health.SERVING else failures + 1
        if failures >= self.config.hang_checks:
            return failures, self._gearmand_gone(
                f"is {check.health.value} after {failures} checks; killing it"
            )
        self._publish_functions(check.functions)
        return failures, None

    def _gearmand_gone(self, what: str) -> State:
        assert self.proc is not None
        log.error("gearmand pid %d %s", self.proc.pid, what)
        self.launcher.stop(kill=True)
        return State.RESTARTING

    def _restart(self) -> State:
        delay = self.policy.record_death(self.clock.monotonic())
        self.proc = None
        if self.policy.crash_looping:
            self.reason = f"gearmand crash loop: {len(self.policy.deaths)} deaths"
            return State.FAILED
        log.warning("restarting gearmand in %.2fs", delay)
        self._wait(delay)
        return State.OWNING

    def _recover(self) -> State:
        self.launcher.stop(kill=True)
        self.proc = None
        self._wait(RETRY_AFTER)
        return State.OWNING

    def _wait_unfenced(self) -> State:
        self.launcher.stop(kill=True)  # killed by the fence already: reap it
        self.proc = None
        while not self.stopping.is_set():
            with self.fence_lock:  # a fence coming now clears `unfenced` again
                if self.unfenced.is_set():
                    self.unfenced.clear()
                    self.fenced.clear()
                    self.interrupt.clear()
                    self.launcher.unfence()
                    break
            self.clock.wait(UNFENCE_POLL, self.stopping)
        if self.stopping.is_set():
            self.interrupt.set()
            return State.STOPPED
        if self.session_renewed.is_set():
            self.session_renewed.clear()
            self.registered = False  # the old session's record went with it
            log.info("new ZooKeeper session: registering again")
        return State.STARTING

    # -- helpers ----------------------------------------------------------------------------

    def _restore_deferred(self) -> None:
        """Try the deferred and refused jobs again, in every store that holds some: function
        names may have become known since, and the store or a peer may have room now."""
        try:
            known = self.known_functions()
        except GearctlError as exc:  # ZooKeeper cut off: gearmand serves on, they wait
            log.warning("deferred or refused jobs wait: no function names (%s)", exc)
            return
        for address, (deferred, refused) in list(self.waiting.items()):
            if not deferred + refused:
                continue
            try:
                report = self.restorer(
                    self.stores[address],
                    self.config.gearman,
                    expected=deferred + refused,
                    keep_prefix=self.prefix,
                    known_functions=known,
                    overflow=self._peers_serving,
                )
            except RestoreIncomplete as exc:
                log.warning("deferred or refused jobs in %s: %s", address, exc)
                continue
            if report.moved:
                log.info(
                    "restored %d waiting jobs from %s; %d still wait for their function name, "
                    "%d are refused",
                    report.moved,
                    address,
                    report.deferred,
                    len(report.refused),
                )
                self.metrics.moved(report.moved)
                self._left_waiting(address, report)

    def _left_waiting(self, address: Endpoint, report: RestoreReport) -> None:
        """Note the jobs a restore of `address` left in it (deferred, refused) and publish the
        node's totals."""
        self.waiting[address] = (report.deferred, len(report.refused))
        self._update(**self._waiting_totals())

    def _waiting_totals(self) -> dict[str, int]:
        """The member record's deferred and refused jobs: the sums over the stores."""
        return {
            "deferred_jobs": sum(deferred for deferred, _ in self.waiting.values()),
            "refused_jobs": sum(refused for _, refused in self.waiting.values()),
        }

    def _peers_serving(self) -> list[Endpoint]:
        """Other members' gearmands that serve: where jobs our own store cannot hold go."""
        try:
            members = self.coord.members()
        except GearctlError as exc:
            log.warning("no peers to send refused jobs to: %s", exc)
            return []
        return [
            Endpoint.parse(m.gearman)
            for name, m in members.items()
            if name != self.config.node and m.state == NodeState.SERVING
        ]

    def _publish_functions(self, names: tuple[str, ...]) -> None:
        """Record new function names in ZooKeeper (only names not published yet cost a write)."""
        try:
            left_out = self.publish_functions(names)
        except GearctlError as exc:
            log.warning("could not publish function names: %s", exc)
            return
        if left_out:
            self.metrics.names_left_out(left_out)
            now = self.clock.monotonic()
            if now >= self.names_warned_at + NAMES_WARN_EVERY:
                self.names_warned_at = now
                log.warning(
                    "function names not published to ZooKeeper (bound hit): %s; a "
                    "client registers many or long names?",
                    dict(left_out),
                )


def _log_progress(report: RestoreReport) -> None:
    log.info(
        "restore: %d of %d jobs moved (%.0f jobs/s)",
        report.moved,
        report.expected,
        report.moved / max(report.seconds, 1e-6),
    )
