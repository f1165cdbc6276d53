"""`gearctl cluster servers`: the live gearmand servers as `host:port,...`, for other clients.

The `gearman` CLI (`-h/-p`), PHP's `GearmanClient::addServers` and libgearman take such a list.
A server is live while its member record in ZooKeeper says `serving` or `restoring`.
"""

from __future__ import annotations

from pathlib import Path

from cluster import target as targets
from cluster.endpoint import Endpoint
from cluster.gearman.discovery import LIVE_STATES
from cluster.membership import read_members
from cluster.target import Flags, Target


def servers_of(target: Target, timeout: float = 5.0) -> list[str]:
    """Live servers (`host:port`) of the target cluster, ordered by node name."""
    with targets.session(target, timeout=timeout) as (zk, paths):
        members = read_members(zk, paths)
    return [
        str(Endpoint.parse(members[name].gearman))
        for name in sorted(members)
        if members[name].state in LIVE_STATES
    ]


def live_servers(
    directory: Path | None, zookeeper: str | None, cluster: str | None = None,
    timeout: float = 5.0,
) -> list[str]:  # fmt: skip
    """Live servers of the cluster at `zookeeper` (or of the local cluster in `directory`)."""
    return servers_of(targets.resolve(Flags(directory, zookeeper, cluster)), timeout)
