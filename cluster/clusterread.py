"""Everything an operator command reads of a cluster in ZooKeeper, in one pass, read-only.

Members (live agents' records and sessions), stores (addresses for peers, owner, incarnation
epoch), take-over history, the pause flag and the function names seen. Nothing here writes:
`gearctl cluster status` on a cluster never changes it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from cluster.functions import FunctionRegistry
from cluster.lease import Owner
from cluster.membership import MemberEntry, read_member_entries
from cluster.takeover import StoreRecord
from cluster.zkpaths import ClusterPaths


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
        return {"store": self.store, "address": address, "owner": owner, "epoch": self.epoch}


@dataclass
class ClusterView:
    cluster: str
    members: dict[str, MemberEntry] = field(default_factory=dict)
    stores: dict[str, StoreView] = field(default_factory=dict)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    paused: bool = False
    functions: set[str] = field(default_factory=set)


def read_cluster(zk: KazooClient, paths: ClusterPaths) -> ClusterView:
    """One read of the cluster's tree (KazooException when the connection drops meanwhile)."""
    return ClusterView(
        cluster=paths.cluster,
        members=read_member_entries(zk, paths),
        stores={name: read_store(zk, paths, name) for name in store_names(zk, paths)},
        takeovers=read_takeovers(zk, paths),
        paused=zk.exists(paths.takeover_paused) is not None,
        functions=FunctionRegistry(zk, paths.functions).known(),
    )


def store_names(zk: KazooClient, paths: ClusterPaths) -> list[str]:
    """Every store (node) the cluster has had: each agent records its own at gearmand's start."""
    return _children(zk, paths.stores)


def read_store(zk: KazooClient, paths: ClusterPaths, store: str) -> StoreView:
    record = owner = epoch = changed = None
    with contextlib.suppress(NoNodeError, ValueError, KeyError):
        record = StoreRecord.decode(zk.get(paths.store(store))[0])
    with contextlib.suppress(NoNodeError, ValueError):
        data, stat = zk.get(paths.store_owner(store))
        owner = Owner.decode(data, stat.ephemeralOwner)
    with contextlib.suppress(NoNodeError, ValueError):
        data, stat = zk.get(paths.store_epoch(store))
        epoch, changed = int(data or b"0"), stat.mtime / 1000
    return StoreView(store, record, owner, epoch, changed)


def read_takeovers(zk: KazooClient | None, paths: ClusterPaths) -> list[dict[str, Any]]:
    """Take-over history, oldest first (running ones have `outcome` "running")."""
    if zk is None:
        return []
    history = []
    for name in sorted(_children(zk, paths.takeovers)):
        try:
            history.append(json.loads(zk.get(f"{paths.takeovers}/{name}")[0]))
        except (NoNodeError, ValueError):
            continue
    return history


def _children(zk: KazooClient, path: str) -> list[str]:
    try:
        return zk.get_children(path)
    except NoNodeError:
        return []
