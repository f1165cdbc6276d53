"""A spread drain wired into the take-over (issue 18): the claimer's plan and every survivor's
parts (the part rule and `PartStore` are cluster/spread.py; the znodes cluster/coord).

The claimer holds the store's owner znode (purpose drain) from the claim to the end, as a single
drain does: it writes the plan (`start_or_keep`) without counts, lists the stores and writes the
counts (`count`) while every other survivor lists them too (`counted`: no survivor waits for the
claimer's listing to start its own), drains parts like every survivor, waits until every part is
done, then sweeps. A part is drained by whoever holds its lease, only while
some claimer holds the store's owner znode as a drain (`drain_owned`): a claimer that died
leaves no part drained until the next claimer keeps the plan, and a returning node, which takes
its store for serving only when no drain owns it, never restores next to a part drainer (but
for the chunk in flight when the part drainer looked: one batch, the kill-drainer bound).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from cluster.coord import (
    Coordination,
    Outcome,
    PartRecord,
    PartSummary,
    PlanEnded,
    Purpose,
    SpreadPlan,
)
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.restore import BATCH, Copies, RestoreIncomplete, restore
from cluster.spread import PartStore, part_order, resumed_expected, split_parts
from cluster.store import Store, StoredItem

log = logging.getLogger("gearctl.takeover")

PART_WAIT = 0.05  # seconds between the claimer's looks at parts others drain (a ZooKeeper read)

PlanListing = list[list[list[StoredItem]]]
"""Per store of a plan, per part: the part's keys in cas order (the claimer's plan listing)."""


def survivors(coord: Coordination, store: str, by: str) -> tuple[str, ...]:
    """The plan's survivors: every live member that drains parts (`MemberRecord.drains_parts`)
    but the dead node, and the claimer itself (whatever its record says)."""
    live = {name for name, m in coord.members().items() if m.live and m.drains_parts}
    return tuple(sorted((live - {store}) | {by}))


def start_or_keep(
    coord: Coordination, store: str, addresses: Sequence[str], make: Callable[[], SpreadPlan]
) -> tuple[SpreadPlan, bool]:
    """The store's plan: the one an earlier claimer of this incarnation wrote (kept: same parts,
    same counts), else a new one from `make()`. True when it was kept."""
    plan = coord.spread_plan(store)
    epoch = coord.epoch(store)
    if plan is not None and plan.epoch == (epoch and epoch[0]) and plan.stores == tuple(addresses):
        return plan, True  # uncounted, if its claimer stopped before counting: count it then
    if plan is not None:
        log.warning("store %s: dropping the spread plan of another incarnation", store)
    coord.end_spread(store)  # a stale plan, or the leftovers of one
    plan = replace(make(), epoch=epoch and epoch[0])
    coord.start_spread(store, plan)
    return plan, False


def plan_listing(addresses: Sequence[str], parts: int) -> PlanListing:
    """Per store, the keys of each part: the stores listed once, whole, while quiescent."""
    listing = []
    for address in addresses:
        with Store(Endpoint.parse(address), timeout=30.0) as source:
            listing.append(split_parts(source.snapshot(expected=None), parts))
    return listing


def count(coord: Coordination, store: str, plan: SpreadPlan, listing: PlanListing) -> SpreadPlan:
    """Step two of the claimer's plan: the counts of its `listing`, written; the counted plan."""
    counted = replace(plan, counts=tuple(tuple(map(len, part)) for part in listing))
    coord.count_spread(store, counted)
    return counted


def counted(
    coord: Coordination, store: str, plan: SpreadPlan, keep_going: Callable[[], bool]
) -> tuple[SpreadPlan, PlanListing | None] | None:
    """A survivor's `plan` once its claimer counted it, with the survivor's own listing of the
    stores when it found the plan uncounted (listed meanwhile: quiescent, since no part is
    drained before the counts). None when the plan ended, its claimer is gone, or
    `keep_going()` turned False first."""
    if plan.counted:
        return plan, None
    listing = plan_listing(plan.stores, plan.parts)
    while keep_going() and drain_owned(coord, store):
        now = coord.spread_plan(store)
        if now is None or now.takeover != plan.takeover:
            return None
        if now.counted:
            return now, listing
        time.sleep(PART_WAIT)
    return None


def drain_owned(coord: Coordination, store: str) -> bool:
    """Does a claimer hold the store's owner znode as a drain (parts may be drained)?"""
    owner = coord.owner(store)
    return owner is not None and owner.purpose == Purpose.DRAIN


def drain_parts(
    coord: Coordination,
    store: str,
    plan: SpreadPlan,
    target: Endpoint,
    *,
    by: str,
    known: Collection[str],
    keep_going: Callable[[], bool],
    overflow: Callable[[], Sequence[Endpoint]] | None = None,
    listed: PlanListing | None = None,
) -> int:
    """Drain every part of `plan` that is free and not done, `by`'s own first; the jobs moved.
    `listed`: the stores listed while the plan was counted, read instead of listing them again
    for a part nobody has started (where it holds the part's every key). Nothing before the
    plan is counted."""
    if not plan.counted:
        return 0
    moved = 0
    for index in part_order(plan.survivors, by):
        if not (keep_going() and drain_owned(coord, store)):
            break
        moved += _drain_part(coord, store, plan, index, target, by=by, known=known,
                             keep_going=keep_going, overflow=overflow,
                             listed=listed)  # fmt: skip
    return moved


def _drain_part(
    coord: Coordination,
    store: str,
    plan: SpreadPlan,
    index: int,
    target: Endpoint,
    *,
    by: str,
    known: Collection[str],
    keep_going: Callable[[], bool],
    overflow: Callable[[], Sequence[Endpoint]] | None,
    listed: PlanListing | None,
) -> int:
    """Part `index` of every store of the node, under the part's lease; the jobs moved."""
    record = coord.spread_part(store, index)
    if record is None or record.done:
        return 0
    lease = coord.part_lease(store, index, by)
    try:
        if lease.try_acquire() is not None:
            return 0
    except PlanEnded:
        return 0
    moved = 0
    try:
        record = coord.spread_part(store, index)  # under the lease: the last drainer's progress
        if record is None or record.done:
            return 0
        resumed = bool(record.drainers)
        record = replace(record, drainers=(*record.drainers, by))
        coord.update_part(store, index, record)
        fresh = listed is not None and not resumed  # nobody deleted a key of the part yet
        after = f" (resumed after {', '.join(record.drainers[:-1])})" if resumed else ""
        how = " from its plan-time listing" if fresh else ""
        log.info("store %s: draining part %d of %d%s%s", store, index, plan.parts, after, how)
        copies = Copies()  # a job in both twins is in the same part of each: it moves once
        began = time.monotonic()

        def going() -> bool:
            return keep_going() and lease.held() and drain_owned(coord, store)

        for position, address in enumerate(plan.stores):
            planned, before = plan.counts[position][index], record.moved[position]
            expected = resumed_expected(planned, before, BATCH) if resumed else planned

            def recorded(done: int, position: int = position, before: int = before) -> None:
                nonlocal record
                moves = list(record.moved)
                moves[position] = before + done
                record = replace(record, moved=tuple(moves))
                coord.update_part(store, index, record)

            keys = listed[position][index] if listed is not None and fresh else None
            if keys is not None and len(keys) != planned:  # deletes of other parts cut it short
                log.info("store %s: part %d: %d of %d keys in the plan-time listing of %s; "
                         "listing again", store, index, len(keys), planned, address)  # fmt: skip
                keys = None
            source = PartStore(Endpoint.parse(address), index, plan.parts, listed=keys)
            try:
                report = restore(source, target, expected=expected, keep_prefix=None,
                                 known_functions=known, progress=lambda r: recorded(r.moved),
                                 should_continue=going, overflow=overflow,
                                 copies=copies)  # fmt: skip
            except RestoreIncomplete as exc:
                recorded(exc.report.moved)
                moved += exc.report.moved
                raise
            recorded(report.moved)
            moved += report.moved
        if going():
            coord.update_part(store, index, replace(record, done=True))
            log.info("store %s: part %d done: %d jobs in %.2fs", store, index, moved,
                     time.monotonic() - began)  # fmt: skip
    except GearctlError as exc:
        log.warning("store %s: part %d stopped after %d jobs: %s", store, index, moved, exc)
    finally:
        lease.release()
    return moved


def wait_parts(
    coord: Coordination, store: str, plan: SpreadPlan, drain: Callable[[], object],
    keep_going: Callable[[], bool],
    seen: Callable[[list[PartRecord | None]], object] | None = None,
) -> list[PartRecord]:  # fmt: skip
    """The claimer: drain free parts (`drain()`) until every part is done; their records, each
    look also given to `seen`. GearctlError when `keep_going()` turns False first (the next
    claimer keeps the plan)."""
    while True:
        drain()
        records = part_records(coord, store, plan)
        if seen is not None:
            seen(records)
        if all(r is not None and r.done for r in records):
            return [r for r in records if r is not None]
        if not keep_going():
            raise GearctlError("the claimer stopped before every part was done")
        time.sleep(PART_WAIT)


def moved_by_parts(records: Sequence[PartRecord]) -> int:
    return sum(sum(r.moved) for r in records)


def part_records(coord: Coordination, store: str, plan: SpreadPlan) -> list[PartRecord | None]:
    """Every part's record (None: the plan ended meanwhile)."""
    return [coord.spread_part(store, i) for i in range(plan.parts)]


def summaries(records: Sequence[PartRecord | None]) -> tuple[PartSummary, ...]:
    """The parts as the take-over record keeps them."""
    return tuple(r.summary(i) for i, r in enumerate(records) if r is not None)


def end_stale(coord: Coordination, store: str) -> SpreadPlan | None:
    """Node `store` is back and holds its store for serving: a plan still there was left by a
    claimer that died before every part was done (a live claimer keeps the store's owner znode,
    and ends its plan before it lets go). End it, and finish its take-over record `interrupted`
    with the jobs its parts moved: the node restores the rest itself. The plan, if any."""
    plan = coord.spread_plan(store)
    if plan is None:
        return None
    records = part_records(coord, store, plan)
    moved = moved_by_parts([r for r in records if r is not None])
    coord.end_spread(store)
    takeover = coord.takeover_at(plan.takeover)
    if takeover is not None and not takeover.done:
        why = f"node {store} came back before every part was done; it restored the rest"
        takeover.finish(Outcome.INTERRUPTED, moved, why)
        takeover.parts = summaries(records)
        coord.update_takeover(plan.takeover, takeover)
    log.warning("store %s: ended the spread plan its claimer left (%s): %d jobs were moved in "
                "parts, the node restores the rest", store, plan.takeover, moved)  # fmt: skip
    return plan
