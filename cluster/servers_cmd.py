"""`gearctl cluster servers`: the live gearmand servers as `host:port,...`, for other clients.

The `gearman` CLI (`-h/-p`), PHP's `GearmanClient::addServers` and libgearman take such a list.
A server is live while its member record in ZooKeeper says `serving` or `restoring`.
"""

from __future__ import annotations

from pathlib import Path

from cluster.discovery import LIVE_STATES
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.localstatus import read_members
from cluster.zkpaths import ClusterPaths

DEFAULT_DIR = Path(".gearctl")


def live_servers(
    directory: Path | None, zookeeper: str | None, cluster: str = "local", timeout: float = 5.0
) -> list[str]:
    """Live servers (`host:port`), ordered by node name.

    With `zookeeper`, read the members of `cluster` there; otherwise use the local cluster in
    `directory` (default `.gearctl`): its ZooKeeper address and cluster name.
    """
    from kazoo.client import KazooClient

    if zookeeper is None:
        from cluster.localcluster import LocalCluster

        directory = directory or DEFAULT_DIR
        local = LocalCluster.load(directory)
        if local is None:
            raise GearctlError(f"no cluster in {directory}; start one with `gearctl cluster up`")
        zookeeper, cluster = local.zookeeper, local.cluster
    zk = KazooClient(hosts=zookeeper, timeout=timeout)
    try:
        zk.start(timeout=timeout)
    except Exception as exc:
        zk.close()
        raise GearctlError(
            f"ZooKeeper {zookeeper} does not answer within {timeout}s: {exc}"
        ) from exc
    try:
        members = read_members(zk, ClusterPaths(cluster))
    finally:
        zk.stop()
        zk.close()
    servers = []
    for name in sorted(members):
        record = members[name]
        if record.state in LIVE_STATES:
            servers.append(str(Endpoint.parse(record.gearman)))
    return servers
