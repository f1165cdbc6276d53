"""`gearctl store drain NODE --into NODE`: an operator drains a dead node's store by hand.

The same guards as a survivor's automatic take-over, by the same function
(cluster.claim.claim_and_drain): the node has no member record (its agent is gone), the store's
owner znode can be created by us (nobody serves or drains it), and the old gearmand is fenced
(refuses connections, or its process is gone on this host). Only then are the jobs moved, and
the drain is recorded under `takeovers/` (`manual: true`). Before those, this command checks
what only it has: the store is described and `--into` names a serving node.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cluster.claim import claim_and_drain
from cluster.coord import Coordination, MemberEntry, NodeState, StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.restore import Progress

TARGET_STATES = (NodeState.SERVING,)  # drain only into a gearmand that serves


class DrainRefused(GearctlError):
    """The drain did not start: the store or the `--into` node is not fit for it."""


@dataclass
class DrainResult:
    store: str
    into: str
    target: str
    fenced: str  # how the old gearmand was found dead
    expected: int
    moved: int
    deferred: int
    seconds: float
    outcome: str  # as the take-over record has it: with the reason, if any
    done: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "into": self.into,
            "target": self.target,
            "fenced": self.fenced,
            "expected": self.expected,
            "moved": self.moved,
            "deferred": self.deferred,
            "seconds": round(self.seconds, 3),
            "outcome": self.outcome,
        }


def drain_by_hand(
    coord: Coordination,
    store: str,
    into: str,
    progress: Progress | None = None,
    interrupted: threading.Event | None = None,
) -> DrainResult:
    """Drain dead node `store`'s memcached store into node `into`'s gearmand, once.

    Raises DrainRefused or ClaimRefused (nothing was moved) when a guard fails. `interrupted`
    stops the drain between chunks (the record then says `interrupted`; the rest stays in the
    store).
    """
    if store == into:
        raise DrainRefused(f"cannot drain store {store} into its own node")
    record = _store_record(coord, store)
    target = _target(coord.member_entries(), into)
    stop = interrupted or threading.Event()
    drained = claim_and_drain(
        coord, store, record, target, by=into, manual=True, progress=progress,
        known=lambda: known_in_cluster(FunctionRegistry(coord), target, 1.0),
        keep_going=lambda: not stop.is_set(),
    )  # fmt: skip
    takeover, report = drained.takeover, drained.report
    return DrainResult(
        store=store,
        into=into,
        target=str(target),
        fenced=drained.fenced,
        expected=report.expected if report else 0,
        moved=takeover.jobs,
        deferred=report.deferred if report else 0,
        seconds=takeover.seconds,
        outcome=takeover.outcome_text,
        done=takeover.done,
    )


def _store_record(coord: Coordination, store: str) -> StoreRecord:
    try:
        record = coord.store_record(store)
    except (ValueError, KeyError):
        raise DrainRefused(
            f"store {store} was never described by its agent (no gearmand started on it yet)"
        ) from None
    if record is None:
        raise DrainRefused(f"no store {store} in cluster {coord.paths.cluster}")
    return record


def _target(members: dict[str, MemberEntry], into: str) -> Endpoint:
    entry = members.get(into)
    if entry is None:
        raise DrainRefused(f"--into {into}: no such live node (no member record in ZooKeeper)")
    if entry.record.state not in TARGET_STATES:
        raise DrainRefused(f"--into {into}: its state is {entry.record.state}, not serving")
    return Endpoint.parse(entry.record.gearman)


def rate_line(moved: int, expected: int, seconds: float) -> str:
    """`moved / total jobs (rate)`, for a progress line."""
    rate = moved / seconds if seconds > 0 else 0.0
    return f"{moved:,} / {expected:,} jobs moved ({rate:,.0f} jobs/s)"
