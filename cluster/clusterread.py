"""Everything an operator command reads of a cluster, in one pass, through its Coordination.

Members (live agents' records and sessions), stores (addresses for peers, both twin stores
where a node has two, owner, incarnation epoch), take-over history, the pause flag and the
function names seen. Nothing here writes: `gearctl cluster status` on a cluster never changes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from cluster.coord import Coordination, MemberEntry, Owner, StoreRecord


@dataclass(frozen=True)
class StoreView:
    store: str
    record: StoreRecord | None  # written by the store's agent at each gearmand start
    owner: Owner | None  # who serves or drains it now
    epoch: int | None  # incarnation of the gearmand that serves it (or served it last)
    epoch_changed: float | None  # when that gearmand started (the epoch znode's mtime)

    def as_json(self) -> dict[str, Any]:
        owner = None if self.owner is None else {"node": self.owner.node,
                                                 "purpose": self.owner.purpose}  # fmt: skip
        address = self.record.address if self.record else None
        twin = self.record.twin if self.record else None
        pending = self.record.pending if self.record else None
        return {"store": self.store, "address": address, "twin": twin, "pending": pending,
                "owner": owner, "epoch": self.epoch}  # fmt: skip


@dataclass
class ClusterView:
    cluster: str
    members: dict[str, MemberEntry] = field(default_factory=dict)
    stores: dict[str, StoreView] = field(default_factory=dict)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    paused: bool = False
    functions: set[str] = field(default_factory=set)


def read_cluster(session: Coordination) -> ClusterView:
    """One read of the cluster (CoordinationError when the connection drops meanwhile)."""
    return ClusterView(
        cluster=session.paths.cluster,
        members=session.member_entries(),
        stores={name: read_store(session, name) for name in session.stores()},
        takeovers=[takeover.as_json() for takeover in session.takeover_history()],
        paused=session.takeover_paused(),
        functions=session.function_names(),
    )


def read_store(session: Coordination, store: str) -> StoreView:
    record = None
    with contextlib.suppress(ValueError, KeyError):  # described at the agent's first start
        record = session.store_record(store)
    epoch, changed = session.epoch(store) or (None, None)
    return StoreView(store, record, session.owner(store), epoch, changed)
