"""A local cluster's status: cluster.clusterstatus, with the PIDs of the processes `up` started."""

from __future__ import annotations

from typing import Any

from cluster import clusterstatus, coord
from cluster.coord import Coordination, CoordinationError
from cluster.local.cluster import LocalCluster
from cluster.target import Target


def connect(cluster: LocalCluster, timeout: float = 2.0) -> Coordination | None:
    """A started session on the local cluster, or None when ZooKeeper does not answer."""
    try:
        return coord.connect(cluster.zookeeper, cluster.cluster, timeout, session_timeout=4.0)
    except CoordinationError:
        return None


def collect(cluster: LocalCluster, session: Coordination | None = None) -> dict[str, Any]:
    """The whole status as a JSON-ready dict (the `--json` schema documented in the README).

    Without `session` it opens (and closes) a ZooKeeper session of its own; the drills pass one
    kept open across refreshes."""
    return clusterstatus.collect(Target.of_local(cluster), session)
