"""The member record an agent keeps in ZooKeeper while it lives (an ephemeral znode)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Self

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from cluster import __version__
from cluster.zkpaths import ClusterPaths

# Node states, as `gearctl cluster status` shows them.
STARTING = "starting"
SERVING = "serving"
RESTORING = "restoring"
RESTARTING = "restarting"
FENCED = "fenced"
WAITING = "waiting"  # for the store: a peer owns it (draining it)
FAILED = "failed"
STORE_LOST = "store-lost"  # gearmand runs on, its store does not answer
DOWN = "down"


@dataclass(frozen=True)
class MemberRecord:
    node: str
    gearman: str
    store: str
    agent_pid: int
    gearmand_pid: int | None
    state: str
    restarts: int = 0
    deferred_jobs: int = 0  # stored jobs waiting until their function name is known
    version: str = __version__

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a record; unknown keys (from a newer agent) are ignored."""
        raw = json.loads(data.decode())
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        return cls(**known)

    def with_changes(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]


def read_members(zk: KazooClient | None, paths: ClusterPaths) -> dict[str, MemberRecord]:
    """Every member record now in ZooKeeper, by node name (unreadable ones are left out)."""
    return {name: entry.record for name, entry in read_member_entries(zk, paths).items()}


@dataclass(frozen=True)
class MemberEntry:
    """A member record with the ZooKeeper session that holds it (its znode's ephemeralOwner)."""

    record: MemberRecord
    session: int
    registered: float  # when the session created the record (znode ctime), epoch seconds


def read_member_entries(zk: KazooClient | None, paths: ClusterPaths) -> dict[str, MemberEntry]:
    """Every member record now in ZooKeeper with its session, by node name."""
    if zk is None:
        return {}
    try:
        names = zk.get_children(paths.members)
    except NoNodeError:
        return {}
    members: dict[str, MemberEntry] = {}
    for name in names:
        try:
            data, stat = zk.get(paths.member(name))
            members[name] = MemberEntry(MemberRecord.decode(data), stat.ephemeralOwner,
                                        stat.ctime / 1000)  # fmt: skip
        except (NoNodeError, ValueError, TypeError):
            continue  # the member left while we looked, or wrote a record we cannot read
    return members


def session_text(session: int) -> str:
    """A ZooKeeper session id as ZooKeeper's own logs print it (0x...)."""
    return f"{session:#x}"
