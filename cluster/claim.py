"""Claim a dead node's store and drain it: the one guard sequence of every take-over.

Both a survivor's automatic take-over (cluster/takeover.py) and the operator's `gearctl store
drain` (cluster/drain.py) call `claim_and_drain`, which goes, in this order:

    no member record (the node's agent is gone)
      -> take the store's owner znode, purpose `drain` (nobody serves or drains it)
      -> the old gearmand is confirmed dead (cluster.fencing.old_server_is_dead)
      -> drain every job of the node's store into the target gearmand (cluster.restore),
         recorded under takeovers/; a node with twin stores has both drained, one after the
         other, under that one owner znode and in one take-over record (a twin that does not
         answer is left `pending` in the take-over and store records: the next claim drains it)
      -> release the owner znode

A guard that says no raises `ClaimRefused` before anything is moved. The owner znode belongs to
the caller's ZooKeeper session: if the caller dies, it vanishes with the session and a survivor
(or another `store drain`) resumes.

One drainer takes a whole store unless the take-over is spread (`[takeover] spread`, or a store
whose spread plan an earlier claimer wrote: cluster/spreaddrain.py): the restore then keeps the
store's FIFO order per priority, and a drainer that dies leaves one store to resume, not pieces.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster import spreaddrain, twinstore
from cluster.coord import (
    Coordination,
    NodeState,
    Outcome,
    PartRecord,
    Purpose,
    SpreadPlan,
    StoreRecord,
    TakeoverRecord,
    session_text,
)
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.fencing import old_server_is_dead
from cluster.restore import Copies, Progress, RestoreIncomplete, RestoreReport, combined, restore
from cluster.store import Store

log = logging.getLogger("gearctl.takeover")


class Refusal(enum.Enum):
    """Which guard refused a claim."""

    ALIVE = "the node still has a member record"
    HELD = "someone owns the store"
    NOT_FENCED = "the old gearmand is not confirmed dead"


class ClaimRefused(GearctlError):
    """A guard said no; nothing was moved. `detail`: the guard's own finding."""

    def __init__(self, refusal: Refusal, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.refusal = refusal
        self.detail = detail or message


@dataclass(frozen=True)
class Drained:
    """A claim that passed every guard: how the old gearmand was found dead, and the drain."""

    fenced: str
    takeover: TakeoverRecord
    report: RestoreReport | None  # None if the restore never started
    here: int  # jobs moved into the caller's gearmand: all of them, but a spread's other parts


def claim_and_drain(
    coord: Coordination,
    store: str,
    record: StoreRecord,
    target: Endpoint,
    *,
    by: str,
    known: Callable[[], set[str]],
    keep_going: Callable[[], bool],
    started: Callable[[], None] = lambda: None,
    progress: Progress | None = None,
    manual: bool = False,
    spread: bool = False,
) -> Drained:
    """Claim dead node `store`'s store (described by `record`) for node `by` and drain it into
    gearmand `target`, once. `known()` gives the function names (asked only once the guards
    passed); the drain stops between chunks when `keep_going()` turns False or the owner znode is
    lost; `started()` is called just before the drain. `spread`: split the jobs among every live
    survivor (cluster/spreaddrain.py); a store with a plan is spread whatever `spread` says
    (an earlier claimer's parts may be draining: the plan is kept, never drained over)."""
    entry = coord.member_entry(store)
    if entry is not None:
        raise ClaimRefused(
            Refusal.ALIVE,
            f"node {store} still has a ZooKeeper session ({session_text(entry.session)}, its "
            f"record says {entry.record.state}): its agent is alive, or died less than a session "
            f"timeout ago. Drain only a dead node's store",
        )
    lease = coord.lease(store, by, Purpose.DRAIN)
    holder = lease.try_acquire()
    if holder is not None:
        why = (
            "its agent is alive"
            if holder.purpose == Purpose.SERVE
            else "another drain runs (see `gearctl takeover list`)"
        )
        raise ClaimRefused(
            Refusal.HELD,
            f"store {store} is held by {holder.node} ({holder.purpose}, ZooKeeper session "
            f"{session_text(holder.session)}): {why}",
        )
    try:
        dead, how = old_server_is_dead(record)
        if not dead:
            message = f"store {store} is not fenced: {how}; nothing was drained"
            raise ClaimRefused(Refusal.NOT_FENCED, message, how)
        plan = coord.spread_plan(store)
        addresses, silent = twinstore.to_drain(drain_order(record), plan and plan.stores)
        if silent is not None or record.pending is not None:
            coord.describe_store(store, twinstore.still_pending(record, silent))
        names = known()
        started()
        drain = _spread if spread or plan is not None else _drain
        takeover, report, here = drain(
            coord,
            store,
            addresses,
            target,
            by=by,
            how=how,
            known=names,
            keep_going=lambda: keep_going() and lease.held(),
            progress=progress,
            manual=manual,
            pending=silent,
        )
    finally:
        lease.release()
    return Drained(how, takeover, report, here)


def drain_order(record: StoreRecord) -> tuple[str, ...]:
    """The node's stores in the order a drain reads them: the twin first (what the current
    gearmand did not write yet is older), then the store the current gearmand wrote."""
    return tuple(reversed(record.addresses))


def _drain(
    coord: Coordination,
    store: str,
    addresses: tuple[str, ...],
    target: Endpoint,
    *,
    by: str,
    how: str,
    known: set[str],
    keep_going: Callable[[], bool],
    progress: Progress | None,
    manual: bool,
    pending: str | None,
) -> tuple[TakeoverRecord, RestoreReport | None, int]:
    """Move every job of the node's stores at `addresses` (its store, or both twin stores, each
    exactly once, one after the other) into `target`, recorded under `takeovers/` as one
    take-over."""
    sources = [Store(Endpoint.parse(address)) for address in addresses]
    counts = [source.curr_items() for source in sources]  # quiescent: gearmand dead, store ours
    takeover = TakeoverRecord(store=store, by=by, started=time.time(), manual=manual,
                              pending=pending)  # fmt: skip
    # Logged before the record is written: whoever sees the record finds the line (drills do).
    log.warning("taking over store %s: %s; draining %d jobs%s into %s", store, how, sum(counts),
                _per_store(sources, counts), target)  # fmt: skip
    path = coord.record_takeover(takeover)
    try:
        report = _restore_all(coord, sources, counts, target, known, keep_going, progress)
        takeover.finish(Outcome.DONE, report.moved, _waiting(report))
    except GearctlError as exc:
        log.error("draining store %s stopped: %s", store, exc)
        report = getattr(exc, "report", None)
        takeover.finish(Outcome.INTERRUPTED, report.moved if report is not None else 0, str(exc))
    _finished(coord, path, takeover)
    return takeover, report, takeover.jobs


def _restore_all(
    coord: Coordination,
    sources: list[Store],
    counts: list[int],
    target: Endpoint,
    known: set[str],
    keep_going: Callable[[], bool],
    progress: Progress | None,
) -> RestoreReport:
    """Restore each of `sources` (expecting its count) into `target`, one after the other, with
    one `Copies` (a job in both twins, left by a crash mid-restore, moves once). On failure the
    RestoreIncomplete's report is every store's so far."""
    reports: list[RestoreReport] = []
    copies = Copies()
    try:
        for source, count in zip(sources, counts, strict=True):
            reports.append(restore(
                source,
                target,
                expected=count,
                keep_prefix=None,
                known_functions=known,
                progress=_running_total(progress, reports, sum(counts)),
                should_continue=keep_going,
                overflow=lambda: other_serving(coord, target),
                copies=copies,
            ))  # fmt: skip
    except RestoreIncomplete as exc:
        raise RestoreIncomplete(str(exc), combined([*reports, exc.report])) from exc
    return combined(reports)


def _spread(
    coord: Coordination,
    store: str,
    addresses: tuple[str, ...],
    target: Endpoint,
    *,
    by: str,
    how: str,
    known: set[str],
    keep_going: Callable[[], bool],
    progress: Progress | None,
    manual: bool,
    pending: str | None,
) -> tuple[TakeoverRecord, RestoreReport | None, int]:
    """The claimer of a spread drain (docs/architecture.md, "Spread drain"): the plan (an
    earlier claimer's kept), this survivor's parts and any free ones until every part is done,
    then a sweep of what the parts left (exact: every store is quiescent again), one take-over
    record (jobs: every part's and the sweep's; the parts, kept up to date while they drain)
    and the plan removed. Also the jobs this claimer moved itself (its parts, the sweep)."""
    takeover = TakeoverRecord(store=store, by=by, started=time.time(), manual=manual,
                              pending=pending)  # fmt: skip

    listed: spreaddrain.PlanListing | None = None  # this claimer's plan listing, if it made one

    def make() -> SpreadPlan:
        ranked = spreaddrain.survivors(coord, store, by)
        log.warning("taking over store %s: %s; spreading its jobs over %s", store, how,
                    ", ".join(ranked))  # fmt: skip
        path = coord.record_takeover(takeover)
        return SpreadPlan(ranked, addresses, (), None, path, takeover.started)  # counts: step two

    plan, kept = spreaddrain.start_or_keep(coord, store, addresses, make)
    if kept:
        log.warning("taking over store %s: %s; keeping the spread plan of %s (parts of %s)",
                    store, how, plan.takeover, ", ".join(plan.survivors))  # fmt: skip
        takeover.started = plan.started
        coord.update_takeover(plan.takeover, takeover)
    report: RestoreReport | None = None
    here = 0

    def drain_free_parts() -> None:
        nonlocal here
        here += spreaddrain.drain_parts(coord, store, plan, target, by=by, known=known,
                                        keep_going=keep_going,
                                        overflow=lambda: other_serving(coord, target),
                                        listed=listed)  # fmt: skip

    def show_parts(records: list[PartRecord | None]) -> None:
        """`takeover list` follows the parts while they drain."""
        shown = spreaddrain.summaries(records)
        if shown != takeover.parts:
            takeover.parts = shown
            takeover.jobs = spreaddrain.moved_by_parts([r for r in records if r is not None])
            coord.update_takeover(plan.takeover, takeover)

    try:
        if not plan.counted:  # step two (a kept plan too, if its claimer stopped before it)
            listed = spreaddrain.plan_listing(addresses, plan.parts)
            plan = spreaddrain.count(coord, store, plan, listed)
            log.warning("store %s: %d jobs to spread (per part: %s)", store,
                        sum(map(sum, plan.counts)),
                        [sum(c[i] for c in plan.counts) for i in range(plan.parts)])  # fmt: skip
        parts = spreaddrain.wait_parts(coord, store, plan, drain_free_parts, keep_going,
                                       seen=show_parts)  # fmt: skip
        takeover.parts = spreaddrain.summaries(parts)
        sources = [Store(Endpoint.parse(address)) for address in addresses]
        left = [source.curr_items() for source in sources]  # quiescent: every part is done
        if sum(left):
            log.warning("store %s: sweeping %d jobs the parts left", store, sum(left))
            report = _restore_all(coord, sources, left, target, known, keep_going, progress)
        swept = report.moved if report is not None else 0
        here += swept
        takeover.finish(Outcome.DONE, spreaddrain.moved_by_parts(parts) + swept,
                        _waiting(report) if report is not None else "")  # fmt: skip
        coord.end_spread(store)
    except GearctlError as exc:
        log.error("spread drain of store %s stopped: %s; the next claimer keeps the plan",
                  store, exc)  # fmt: skip
        records = spreaddrain.part_records(coord, store, plan)
        moved = spreaddrain.moved_by_parts([r for r in records if r is not None])
        takeover.parts = spreaddrain.summaries(records)
        takeover.finish(Outcome.INTERRUPTED, moved, f"{exc}; the next claimer keeps the plan")
    _finished(coord, plan.takeover, takeover)
    return takeover, report, here


def _finished(coord: Coordination, path: str, takeover: TakeoverRecord) -> None:
    """Log the take-over's end and write its record."""
    log.warning(
        "take-over of store %s %s: %d jobs in %.2fs",
        takeover.store,
        takeover.outcome_text,
        takeover.jobs,
        takeover.seconds,
    )
    coord.update_takeover(path, takeover)


def _per_store(sources: list[Store], counts: list[int]) -> str:
    """` (n in host:port, m in host:port)` for a node with twin stores, else nothing."""
    if len(sources) == 1:
        return ""
    return f" ({', '.join(f'{n} in {s.endpoint}' for s, n in zip(sources, counts, strict=True))})"


def _running_total(
    progress: Progress | None, finished: list[RestoreReport], total: int
) -> Progress | None:
    """Progress of the store being drained, shown as the whole take-over's: `finished` are the
    reports of the stores drained before it, `total` the jobs counted in every store."""
    if progress is None:
        return None
    done = list(finished)

    def show(report: RestoreReport) -> None:
        whole = combined([*done, report])
        whole.expected = total
        progress(whole)

    return show


def other_serving(coord: Coordination, target: Endpoint) -> list[Endpoint]:
    """Serving gearmands besides `target`: where jobs `target` refused twice go."""
    try:
        members = coord.members().values()
    except GearctlError as exc:
        log.warning("no other gearmand to send refused jobs to: %s", exc)
        return []
    serving = {Endpoint.parse(m.gearman) for m in members if m.state == NodeState.SERVING}
    return sorted(serving - {target}, key=str)


def _waiting(report: RestoreReport) -> str:
    """What a finished drain left in the store, for the take-over record's outcome."""
    parts = []
    if report.deferred:
        parts.append(f"{report.deferred} jobs wait for their function name")
    if report.refused:
        reasons = sorted(set(report.refused.values()))
        parts.append(f"{len(report.refused)} jobs refused by every gearmand ({'; '.join(reasons)})")
    return "; ".join(parts)
