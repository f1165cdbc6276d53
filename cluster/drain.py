"""`gearctl store drain NODE --into NODE`: an operator drains a dead node's store by hand.

The same guards as a survivor's automatic take-over (cluster/takeover.py), in the same order:
the node has no member record (its agent is gone), the store's owner znode can be created by us
(nobody serves or drains it), and the old gearmand is fenced (refuses connections, or its
process is gone on this host). Only then are the jobs moved, with the same restore routine, and
the drain is recorded under `takeovers/` (`manual: true`). The lease belongs to this command's
ZooKeeper session: if the command dies, the lease vanishes with the session and a survivor (or
another `store drain`) resumes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from cluster import membership
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.lease import DRAIN, SERVE, StoreLease
from cluster.membership import read_member_entries, session_text
from cluster.restore import Progress
from cluster.store import Store
from cluster.takeover import StoreRecord, drain_store, old_server_is_dead
from cluster.zkpaths import ClusterPaths

TARGET_STATES = (membership.SERVING,)  # drain only into a gearmand that serves


class DrainRefused(GearctlError):
    """The drain did not start: a guard (owner alive, another drain, no fence) said no."""


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
    outcome: str

    @property
    def done(self) -> bool:
        return self.outcome.startswith("done")

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
    zk: KazooClient,
    paths: ClusterPaths,
    store: str,
    into: str,
    progress: Progress | None = None,
    interrupted: threading.Event | None = None,
) -> DrainResult:
    """Drain dead node `store`'s memcached store into node `into`'s gearmand, once.

    Raises DrainRefused (nothing was moved) when a guard fails. `interrupted` stops the drain
    between chunks (the record then says `interrupted`; the rest stays in the store).
    """
    if store == into:
        raise DrainRefused(f"cannot drain store {store} into its own node")
    record = _store_record(zk, paths, store)
    members = read_member_entries(zk, paths)
    target = _target(members, into)
    if store in members:
        entry = members[store]
        raise DrainRefused(
            f"node {store} still has a ZooKeeper session ({session_text(entry.session)}, its "
            f"record says {entry.record.state}): its agent is alive, or died less than a session "
            f"timeout ago. Drain only a dead node's store"
        )
    lease = StoreLease(zk, paths.store_owner(store), into, DRAIN)
    holder = lease.try_acquire()
    if holder is not None:
        why = (
            "its agent is alive"
            if holder.purpose == SERVE
            else "another drain runs (see `gearctl takeover list`)"
        )
        raise DrainRefused(
            f"store {store} is held by {holder.node} ({holder.purpose}, ZooKeeper session "
            f"{session_text(holder.session)}): {why}"
        )
    try:
        dead, how = old_server_is_dead(record)
        if not dead:
            raise DrainRefused(f"store {store} is not fenced: {how}; nothing was drained")
        known = known_in_cluster(zk, paths, FunctionRegistry(zk, paths.functions), target, 1.0)
        stop = interrupted or threading.Event()
        takeover, report = drain_store(
            zk, paths, store, Store(Endpoint.parse(record.address)), target, by=into, how=how,
            known=known, should_continue=lambda: not stop.is_set() and lease.held(),
            progress=progress, manual=True,
        )  # fmt: skip
    finally:
        lease.release()
    return DrainResult(
        store=store,
        into=into,
        target=str(target),
        fenced=how,
        expected=report.expected if report else 0,
        moved=takeover.jobs,
        deferred=report.deferred if report else 0,
        seconds=takeover.seconds,
        outcome=takeover.outcome,
    )


def _store_record(zk: KazooClient, paths: ClusterPaths, store: str) -> StoreRecord:
    try:
        return StoreRecord.decode(zk.get(paths.store(store))[0])
    except NoNodeError:
        raise DrainRefused(f"no store {store} in cluster {paths.cluster}") from None
    except (ValueError, KeyError):
        raise DrainRefused(
            f"store {store} was never described by its agent (no gearmand started on it yet)"
        ) from None


def _target(members: dict[str, membership.MemberEntry], into: str) -> Endpoint:
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
