"""`gearctl cluster status` of a local cluster: processes, ZooKeeper records, live counters."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError

from cluster import membership, zkclient
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, LaunchError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.gearman.admin import AdminClient
from cluster.jobkey import incarnation_prefix
from cluster.local.zookeeper_server import zookeeper_mode
from cluster.membership import MemberEntry, read_member_entries, read_members, session_text
from cluster.process import log_tail, pid_inside, pid_outside
from cluster.store import Store
from cluster.zkpaths import ClusterPaths

if TYPE_CHECKING:
    from cluster.local.cluster import LocalCluster

PROBE_TIMEOUT = 1.0
SERVING_TIMEOUT = 30.0


@dataclass
class NodeStatus:
    name: str
    gearman: str
    store: str
    agent_pid: int | None
    gearmand_pid: int | None
    state: str
    queued_jobs: int | None
    store_items: int | None
    restarts: int
    deferred_jobs: int
    gearmand_started: float | None = None  # last (re)start of its gearmand (epoch's mtime)
    zk_session: str | None = None  # the agent's ZooKeeper session (holds its member record)
    zk_session_state: str | None = None  # "live"; "expiring" while a dead agent's lingers
    metrics: str | None = None  # the agent's Prometheus endpoint (host:port), if it has one


def connect(cluster: LocalCluster, timeout: float = 2.0) -> KazooClient | None:
    """A started kazoo client, or None when ZooKeeper does not answer within `timeout`."""
    zk = zkclient.make_client(cluster.zookeeper, timeout=4.0)
    try:
        zk.start(timeout=timeout)
    except Exception:
        zk.close()
        return None
    return zk


def cluster_function_names(cluster: LocalCluster) -> set[str]:
    """Function names the cluster knows (ZooKeeper and its gearmands); empty without ZooKeeper."""
    zk = connect(cluster)
    if zk is None:
        return set()
    try:
        paths = ClusterPaths(cluster.cluster)
        own = Endpoint.parse(cluster.nodes[0].gearman)
        return known_in_cluster(zk, paths, FunctionRegistry(zk, paths.functions), own, 1.0)
    finally:
        zk.stop()
        zk.close()


def live_prefix(cluster: LocalCluster, node: str) -> str | None:
    """The key prefix of the gearmand that serves `node`'s store now; None if not known."""
    zk = connect(cluster)
    if zk is None:
        return None
    try:
        return incarnation_prefix(int(zk.get(ClusterPaths(cluster.cluster).store_epoch(node))[0]))
    except (NoNodeError, ValueError):
        return None
    finally:
        zk.stop()
        zk.close()


def node_status(
    cluster: LocalCluster,
    node_name: str,
    entry: MemberEntry | None,
    gearmand_started: float | None = None,
) -> NodeStatus:
    node = next(n for n in cluster.nodes if n.name == node_name)
    member = entry.record if entry else None
    agent = cluster.agent_pid(node.name)  # PIDs as this machine sees them (a host has its own)
    if agent is None:
        state = membership.DOWN
    elif member is None:
        state = membership.STARTING
    else:
        state = member.state
    return NodeStatus(
        name=node.name,
        gearman=node.gearman,
        store=node.store,
        agent_pid=agent,
        gearmand_pid=pid_outside(member.gearmand_pid, agent) if member and agent else None,
        state=state,
        queued_jobs=_queued_jobs(Endpoint.parse(node.gearman)),
        store_items=_store_items(Endpoint.parse(node.store)),
        restarts=member.restarts if member else 0,
        deferred_jobs=member.deferred_jobs if member else 0,
        gearmand_started=gearmand_started,
        zk_session=session_text(entry.session) if entry else None,
        zk_session_state=("live" if agent else "expiring") if entry else None,
        metrics=node.metrics,
    )


def _queued_jobs(endpoint: Endpoint) -> int | None:
    try:
        return sum(f.queued for f in AdminClient(endpoint, timeout=PROBE_TIMEOUT).status())
    except GearctlError:
        return None


def _store_items(endpoint: Endpoint) -> int | None:
    try:
        return Store(endpoint, timeout=PROBE_TIMEOUT).curr_items()
    except GearctlError:
        return None


@dataclass
class _ZooKeeperView:
    """What the status reads from ZooKeeper in one go (empty when it is unreachable)."""

    reachable: bool = False
    members: dict[str, MemberEntry] = field(default_factory=dict)
    stores: list[dict[str, Any]] = field(default_factory=list)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    takeover_paused: bool = False


def _read_zookeeper(cluster: LocalCluster, zk: KazooClient | None) -> _ZooKeeperView:
    if zk is None or not zk.connected:
        return _ZooKeeperView(stores=[_store_status(None, ClusterPaths(""), n.name, n.store)
                                      for n in cluster.nodes])  # fmt: skip
    paths = ClusterPaths(cluster.cluster)
    try:
        return _ZooKeeperView(
            reachable=True,
            members=read_member_entries(zk, paths),
            stores=[_store_status(zk, paths, node.name, node.store) for node in cluster.nodes],
            takeovers=read_takeovers(zk, paths),
            takeover_paused=zk.exists(paths.takeover_paused) is not None,
        )
    except KazooException:  # the connection dropped while we read
        return _read_zookeeper(cluster, None)


def collect(cluster: LocalCluster, zk: KazooClient | None = None) -> dict[str, Any]:
    """The whole status as a JSON-ready dict (the `--json` schema documented in the README).

    Without `zk` it opens (and closes) a ZooKeeper session of its own; `gearctl cluster status
    --watch` passes one session kept open across refreshes.
    """
    own_session = zk is None
    if own_session:
        zk = connect(cluster)
    try:
        view = _read_zookeeper(cluster, zk)
    finally:
        if own_session and zk is not None:
            zk.stop()
            zk.close()
    started = {store["store"]: store.get("gearmand_started") for store in view.stores}
    return {
        "cluster": cluster.cluster,
        "zookeeper": {
            "address": cluster.zookeeper,
            "reachable": view.reachable,
            "members": [
                {"address": address, "mode": zookeeper_mode(Endpoint.parse(address), 0.5)}
                for address in cluster.zookeeper.split(",")
            ],
        },
        "nodes": [
            asdict(node_status(cluster, n.name, view.members.get(n.name), started.get(n.name)))
            for n in cluster.nodes
        ],
        "stores": [
            {k: v for k, v in store.items() if k != "gearmand_started"} for store in view.stores
        ],
        "takeovers": view.takeovers,
        "takeover_paused": view.takeover_paused,
    }


def read_takeovers(zk: KazooClient | None, paths: ClusterPaths) -> list[dict[str, Any]]:
    """Take-over history, oldest first (running ones have `outcome` "running")."""
    if zk is None:
        return []
    try:
        names = sorted(zk.get_children(paths.takeovers))
    except NoNodeError:
        return []
    history = []
    for name in names:
        try:
            history.append(json.loads(zk.get(f"{paths.takeovers}/{name}")[0]))
        except (NoNodeError, ValueError):
            continue
    return history


def _store_status(
    zk: KazooClient | None, paths: ClusterPaths, store: str, address: str
) -> dict[str, Any]:
    epoch: int | None = None
    started: float | None = None
    owner: dict[str, str] | None = None
    if zk is not None:
        with contextlib.suppress(NoNodeError, ValueError, KazooException):
            data, stat = zk.get(paths.store_epoch(store))
            epoch, started = int(data or b"0"), stat.mtime / 1000
        try:
            raw = json.loads(zk.get(paths.store_owner(store))[0] or b"{}")
            owner = {"node": raw.get("node"), "purpose": raw.get("purpose")}
        except (NoNodeError, KazooException, ValueError):
            pass
    return {"store": store, "address": address, "owner": owner, "epoch": epoch,
            "gearmand_started": started}  # fmt: skip


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
                agent = cluster.agent_pid(name)
                # A record left by an earlier agent's session does not count.
                if (member and member.state == membership.SERVING and agent is not None
                        and member.agent_pid == pid_inside(agent)):  # fmt: skip
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
