"""`gearctl cluster servers`: the live gearmand servers as `host:port,...`, for other clients.

The `gearman` CLI (`-h/-p`), PHP's `GearmanClient::addServers` and libgearman take such a list.
A server is live while its member record in ZooKeeper says `serving` or `restoring`.
"""

from __future__ import annotations

from cluster import zksession
from cluster.endpoint import Endpoint


def live_servers(zookeeper: str, cluster: str = "local", timeout: float = 5.0) -> list[str]:
    """Live servers (`host:port`) of `cluster` in ZooKeeper `zookeeper`, ordered by node name."""
    with zksession.session(zookeeper, cluster, timeout=timeout) as coord:
        members = coord.members()
    return [str(Endpoint.parse(members[name].gearman)) for name in sorted(members)
            if members[name].live]  # fmt: skip
