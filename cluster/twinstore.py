"""Twin stores (issue 18): which of a node's two memcached instances the next gearmand gets.

gearmand 1.1.20 walks its whole store before it serves (docs/architecture.md, "Serving at once at
any store size"), so each gearmand start goes to the twin that holds fewer items, normally an empty
one, and the restore reads the jobs from both. Counts must be taken while no gearmand runs on
either twin (quiescent), as the single-store agent counts today.

The agent (cluster.agent.machine) plans every gearmand start with `plan_start`, with one store
as well as with twins: one store serves every start and is restored from itself.

A twin that does not answer at a start is *pending* (docs/architecture.md, "A silent twin"): the
answering twin serves and is restored at once, the silent one is restored (or, for a dead node,
drained) exactly once when it answers again; one that comes back restarted lost what it held
(`came_back_restarted`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cluster.coord import StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.store import UPTIME_SLACK, Store, StoreIdentity

log = logging.getLogger("gearctl.takeover")


@dataclass(frozen=True)
class TwinStart:
    """One gearmand start: the twin it writes, and where its restore reads, in that order."""

    serve: Endpoint
    restore_from: tuple[Endpoint, ...]  # the other twin first (its jobs are the older ones)
    expected: int  # jobs the restore must move: both twins' quiescent counts
    walk: int  # items the new gearmand walks before it serves (0 but after a crash mid-restore)
    pending: Endpoint | None = None  # a silent twin: restored once it answers


def plan_start(twins: tuple[Endpoint, ...], counts: tuple[int | None, ...]) -> TwinStart:
    """The twin with fewer items serves (the first on a tie); every twin holding items is
    restored from, the other one first. A single store (no twin) serves and is restored from.
    A count of None is a store that did not answer: with twins, the answering one serves and is
    restored from (as a single store), the silent one is `pending`; with none answering there is
    nothing to start on (GearctlError)."""
    if len(twins) != len(counts) or len(twins) not in (1, 2):
        raise GearctlError(f"one or two stores with a count each, not {twins} and {counts}")
    if len(twins) == 2 and twins[0] == twins[1]:
        raise GearctlError(f"the twin stores must be two memcached instances, both are {twins[0]}")
    answering = {twin: n for twin, n in zip(twins, counts, strict=True) if n is not None}
    if not answering:
        raise GearctlError(f"no store answers: {', '.join(map(str, twins))}")
    if min(answering.values()) < 0:
        raise GearctlError(f"item counts cannot be negative: {counts}")
    if len(answering) < len(twins) or len(twins) == 1:
        ((serve, count),) = answering.items()
        silent = next((twin for twin in twins if twin not in answering), None)
        return TwinStart(serve, (serve,) if count else (), count, count, silent)
    known = tuple(answering.values())
    serve = 0 if known[0] <= known[1] else 1
    other = 1 - serve
    restore_from = tuple(twins[i] for i in (other, serve) if known[i])
    return TwinStart(twins[serve], restore_from, sum(known), known[serve])


@dataclass(frozen=True)
class Pending:
    """A twin silent at a gearmand start: since when (wall clock), and the memcached it was when
    it was last seen (None when never seen)."""

    address: Endpoint
    since: float
    before: StoreIdentity | None


def came_back_restarted(
    now: StoreIdentity, before: StoreIdentity | None, silent_since: float
) -> bool:
    """Did a twin that was silent since `silent_since` (wall clock) restart meanwhile, losing
    what it held? Against the identity seen `before` it went silent when there is one (another
    PID, or started later), else by its start: after the silence began."""
    if before is not None:
        return now.restarted_since(before)
    return now.started > silent_since + UPTIME_SLACK


def to_drain(
    order: tuple[str, ...], planned: tuple[str, ...] | None
) -> tuple[tuple[str, ...], str | None]:
    """The stores a claim drains (in `order`) and the twin it leaves pending. A spread plan's
    stores (`planned`) are kept as they are: its parts may be draining, and other stores would
    drop the plan (cluster/spreaddrain.py); a twin the plan leaves out is pending."""
    if planned is not None:
        return planned, next((address for address in order if address not in planned), None)
    return answering(order)


def answering(addresses: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """A dead node's stores (drain order) that a drain reads now, and the twin left pending:
    the one silent twin when its twin answers. With both answering, or neither (the drain's
    count then fails as for one store), every address is read and none is pending."""
    if len(addresses) < 2:
        return addresses, None
    up = tuple(address for address in addresses if _answers(address))
    if len(up) != 1:
        return addresses, None
    return up, next(address for address in addresses if address not in up)


def still_pending(record: StoreRecord, silent: str | None) -> StoreRecord:
    """The store record after a claim that found `silent` not answering (None: every twin
    answers); a pending twin that answers again is checked for a restart (logged LOST)."""
    if record.pending is not None and record.pending != silent:
        _report_back(record.pending, record.pending_since)
    if silent is None:
        return record.with_pending(None)
    if record.pending == silent:
        return record
    log.error("twin store %s does not answer: draining its twin; it stays pending until it "
              "answers and the next take-over drains it", silent)  # fmt: skip
    return record.with_pending(silent, time.time())


def report_back(
    address: object,
    now: StoreIdentity,
    before: StoreIdentity | None,
    since: float | None,
    moving: str,
) -> bool:
    """A pending twin answers again, its jobs `moving` now (restored by its agent, drained by a
    claim): True, logged LOST, when it restarted while silent (`came_back_restarted`; never
    judged without `since`), so the jobs it held are gone."""
    if since is not None and came_back_restarted(now, before, since):
        log.error("twin store %s is LOST: it answers again, but restarted while silent "
                  "(memcached pid %d, started %.0f s after it went silent): the jobs it held "
                  "are gone", address, now.pid, now.started - since)  # fmt: skip
        return True
    log.warning("twin store %s answers again: %s", address, moving)
    return False


def _answers(address: str) -> bool:
    with Store(Endpoint.parse(address)) as store:
        return store.ping()


def _report_back(address: str, since: float | None) -> None:
    try:
        with Store(Endpoint.parse(address)) as store:
            identity = store.identity()
    except GearctlError:
        return  # answered the ping, not this: the drain's count tells
    report_back(address, identity, None, since, "draining it")
