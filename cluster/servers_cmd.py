"""`gearctl cluster servers`: the live gearmand servers as `host:port,...`, for other clients.

The `gearman` CLI (`-h/-p`), PHP's `GearmanClient::addServers` and libgearman take such a list.
A server is live while its member record in ZooKeeper says `serving` or `restoring`.
"""

from __future__ import annotations

from pathlib import Path

from cluster import zksession
from cluster.endpoint import Endpoint
from cluster.gearman.discovery import LIVE_STATES
from cluster.local.status import read_members


def live_servers(
    directory: Path | None, zookeeper: str | None, cluster: str = "local", timeout: float = 5.0
) -> list[str]:
    """Live servers (`host:port`), ordered by node name.

    With `zookeeper`, read the members of `cluster` there; otherwise use the local cluster in
    `directory` (default `.gearctl`): its ZooKeeper address and cluster name.
    """
    with zksession.session(directory, zookeeper, cluster, timeout=timeout) as (zk, paths):
        members = read_members(zk, paths)
    return [
        str(Endpoint.parse(members[name].gearman))
        for name in sorted(members)
        if members[name].state in LIVE_STATES
    ]
