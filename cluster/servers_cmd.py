"""`gearctl cluster servers`: the live gearmand servers as `host:port,...`, for other clients.

The `gearman` CLI (`-h/-p`), PHP's `GearmanClient::addServers` and libgearman take such a list.
A server is live while its member record in ZooKeeper says `serving` or `restoring`.
"""

from __future__ import annotations

from cluster import target as targets
from cluster.endpoint import Endpoint
from cluster.target import Target


def servers_of(target: Target, timeout: float = 5.0) -> list[str]:
    """Live servers (`host:port`) of the target cluster, ordered by node name."""
    with targets.session(target, timeout=timeout) as session:
        members = session.members()
    return [str(Endpoint.parse(members[name].gearman)) for name in sorted(members)
            if members[name].live]  # fmt: skip


def live_servers(zookeeper: str, cluster: str = "local", timeout: float = 5.0) -> list[str]:
    """Live servers (`host:port`) of `cluster` in ZooKeeper `zookeeper`, ordered by node name."""
    return servers_of(Target(zookeeper, cluster, source="--zookeeper"), timeout)
