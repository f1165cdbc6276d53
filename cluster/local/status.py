"""`gearctl cluster status` of a local cluster: processes, ZooKeeper records, live counters."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster import coord
from cluster.coord import Coordination, CoordinationError, MemberEntry, NodeState, session_text
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.gearman.admin import AdminClient
from cluster.jobkey import incarnation_prefix
from cluster.local.cluster import LocalCluster
from cluster.local.zookeeper_server import zookeeper_mode
from cluster.process import pid_outside
from cluster.store import Store

PROBE_TIMEOUT = 1.0


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


def connect(cluster: LocalCluster, timeout: float = 2.0) -> Coordination | None:
    """A started session on the local cluster, or None when ZooKeeper does not answer."""
    try:
        return coord.connect(cluster.zookeeper, cluster.cluster, timeout, session_timeout=4.0)
    except CoordinationError:
        return None


def cluster_function_names(cluster: LocalCluster) -> set[str]:
    """Function names the cluster knows (ZooKeeper and its gearmands); empty without ZooKeeper."""
    session = connect(cluster)
    if session is None:
        return set()
    try:
        own = Endpoint.parse(cluster.nodes[0].gearman)
        return known_in_cluster(FunctionRegistry(session), own, 1.0)
    finally:
        session.close()


def live_prefix(cluster: LocalCluster, node: str) -> str | None:
    """The key prefix of the gearmand that serves `node`'s store now; None if not known."""
    session = connect(cluster)
    if session is None:
        return None
    try:
        epoch = session.epoch(node)
        return incarnation_prefix(epoch[0]) if epoch else None
    finally:
        session.close()


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
        state = NodeState.DOWN.value
    elif member is None:
        state = NodeState.STARTING.value
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


def _read_zookeeper(cluster: LocalCluster, session: Coordination | None) -> _ZooKeeperView:
    if session is None or not session.connected:
        return _ZooKeeperView(stores=[_store_status(None, n.name, n.store) for n in cluster.nodes])
    try:
        return _ZooKeeperView(
            reachable=True,
            members=session.member_entries(),
            stores=[_store_status(session, node.name, node.store) for node in cluster.nodes],
            takeovers=[takeover.as_json() for takeover in session.takeover_history()],
            takeover_paused=session.takeover_paused(),
        )
    except CoordinationError:  # the connection dropped while we read
        return _read_zookeeper(cluster, None)


def collect(cluster: LocalCluster, session: Coordination | None = None) -> dict[str, Any]:
    """The whole status as a JSON-ready dict (the `--json` schema documented in the README).

    Without `session` it opens (and closes) a ZooKeeper session of its own; `gearctl cluster
    status --watch` passes one session kept open across refreshes.
    """
    own_session = session is None
    if own_session:
        session = connect(cluster)
    try:
        view = _read_zookeeper(cluster, session)
    finally:
        if own_session and session is not None:
            session.close()
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


def _store_status(session: Coordination | None, store: str, address: str) -> dict[str, Any]:
    epoch: int | None = None
    started: float | None = None
    owner: dict[str, str] | None = None
    if session is not None:
        with contextlib.suppress(CoordinationError):
            epoch, started = session.epoch(store) or (None, None)
        with contextlib.suppress(CoordinationError):
            found = session.owner(store)
            owner = {"node": found.node, "purpose": found.purpose} if found else None
    return {"store": store, "address": address, "owner": owner, "epoch": epoch,
            "gearmand_started": started}  # fmt: skip
