"""One ZooKeeper session for an operator command, on a local (`--dir`) or any cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError

from cluster import zkclient
from cluster.errors import GearctlError
from cluster.zkpaths import ClusterPaths

DEFAULT_DIR = Path(".gearctl")


def locate(directory: Path | None, zookeeper: str | None, cluster: str) -> tuple[str, str]:
    """(ZooKeeper hosts, cluster name): given with `--zookeeper`, else the local cluster's."""
    if directory is not None and zookeeper is not None:
        raise GearctlError("give --dir or --zookeeper, not both")
    if zookeeper is not None:
        return zookeeper, cluster
    from cluster.local.cluster import LocalCluster

    directory = directory or DEFAULT_DIR
    local = LocalCluster.load(directory)
    if local is None:
        raise GearctlError(f"no cluster in {directory}; start one with `gearctl cluster up`")
    return local.zookeeper, local.cluster


@contextmanager
def session(
    directory: Path | None,
    zookeeper: str | None,
    cluster: str,
    auth_file: Path | None = None,
    timeout: float = 5.0,
) -> Iterator[tuple[KazooClient, ClusterPaths]]:
    """A started kazoo client and the cluster's paths; closed (its session ended) on exit."""
    hosts, name = locate(directory, zookeeper, cluster)
    credentials = zkclient.read_credentials(auth_file) if auth_file else None
    zk = zkclient.make_client(hosts, timeout=timeout, credentials=credentials)
    try:
        zk.start(timeout=timeout)
    except Exception as exc:
        zk.close()
        raise GearctlError(f"ZooKeeper {hosts} does not answer within {timeout}s: {exc}") from exc
    try:
        yield zk, ClusterPaths(name)
    except NoAuthError as exc:
        raise GearctlError(
            f"ZooKeeper {hosts} refused the change (ACLs are on): give --auth-file with the "
            "cluster's credentials"
        ) from exc
    except KazooException as exc:
        raise GearctlError(f"ZooKeeper {hosts}: {type(exc).__name__} {exc}") from exc
    finally:
        zk.stop()
        zk.close()
