"""One ZooKeeper session for an operator command (`--zookeeper`, `--cluster`, `--auth-file`).

A local cluster's `--dir` is turned into ZooKeeper hosts and cluster name by the CLI
(cluster.local.cluster.locate): operator code never reads the local cluster's files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster import coord, zkclient
from cluster.coord import Coordination, CoordinationRefused
from cluster.errors import GearctlError


@contextmanager
def session(
    hosts: str, cluster: str, auth_file: Path | None = None, timeout: float = 5.0
) -> Iterator[Coordination]:
    """A started session on `cluster`; closed (its ephemeral znodes removed) on exit."""
    credentials = zkclient.read_credentials(auth_file) if auth_file else None
    try:
        with coord.session(hosts, cluster, timeout, credentials) as started:
            yield started
    except CoordinationRefused as exc:
        raise GearctlError(
            f"ZooKeeper {hosts} refused the change (ACLs are on): give --auth-file with the "
            "cluster's credentials"
        ) from exc
