"""A local cluster's status (cluster.clusterstatus with its PIDs) and `cluster up`'s wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient

from cluster import clusterstatus, membership, zkclient
from cluster.clusterread import read_takeovers
from cluster.errors import LaunchError
from cluster.membership import read_members
from cluster.process import log_tail
from cluster.target import Target
from cluster.zkpaths import ClusterPaths

__all__ = ["collect", "connect", "read_takeovers", "wait_serving"]

if TYPE_CHECKING:
    from cluster.local.cluster import LocalCluster

SERVING_TIMEOUT = 30.0


def connect(cluster: LocalCluster, timeout: float = 2.0) -> KazooClient | None:
    """A started kazoo client, or None when ZooKeeper does not answer within `timeout`."""
    zk = zkclient.make_client(cluster.zookeeper, timeout=4.0)
    try:
        zk.start(timeout=timeout)
    except Exception:
        zk.close()
        return None
    return zk


def collect(cluster: LocalCluster, zk: KazooClient | None = None) -> dict[str, Any]:
    """The local cluster's status document (cluster.clusterstatus, with its processes' PIDs)."""
    return clusterstatus.collect(Target.of_local(cluster), zk)


def wait_serving(
    cluster: LocalCluster, progress: Callable[[str], None], timeout: float = SERVING_TIMEOUT
) -> None:
    """Return once every node's agent reports `serving`; fail with the agent's log otherwise."""
    paths = ClusterPaths(cluster.cluster)
    zk = connect(cluster, timeout=timeout)
    if zk is None:
        raise LaunchError(f"ZooKeeper {cluster.zookeeper} does not answer")
    try:
        deadline = time.monotonic() + timeout
        waiting = {n.name for n in cluster.nodes}
        while waiting:
            members = read_members(zk, paths)
            for name in sorted(waiting):
                if not cluster.running(f"agent:{name}"):
                    pid = cluster.processes[f"agent:{name}"].pid
                    raise LaunchError(
                        _agent_failure(cluster, name, f"the agent (pid {pid}) exited")
                    )
                member = members.get(name)
                agent_pid = cluster.processes[f"agent:{name}"].pid
                # A record left by an earlier agent's session does not count.
                if member and member.state == membership.SERVING and member.agent_pid == agent_pid:
                    progress(f"{name}: serving on {member.gearman}")
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                reason = f"not serving after {timeout:.0f}s"
                raise LaunchError(_agent_failure(cluster, sorted(waiting)[0], reason))
            time.sleep(0.05)
    finally:
        zk.stop()
        zk.close()


def _agent_failure(cluster: LocalCluster, node: str, reason: str) -> str:
    agent_log = cluster.node_dir(node) / "log" / "agent.log"
    gearmand_log = cluster.node_dir(node) / "log" / "gearmand.log"
    return (
        f"{node}: {reason}\nlast lines of {agent_log}:\n{log_tail(agent_log)}"
        f"\nlast lines of {gearmand_log}:\n{log_tail(gearmand_log, 5)}"
    )
