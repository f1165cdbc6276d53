"""`gearctl cluster status` of any cluster: ZooKeeper's records plus a probe of every node.

The nodes are those ZooKeeper knows (a store record or a live member), plus, on a local cluster,
those of its plan. Every node's gearmand and memcached (both twin stores where its store record
names two) are asked at once (cluster.probe), and every ZooKeeper member's mode too, so the
answer takes about one probe timeout however many nodes do not answer. On a local cluster
(`--dir`), the PIDs of the processes `cluster up` started are shown and a node whose agent
process is gone is `down` at once; elsewhere a node is `down` once its agent's session has
expired (its member record is gone).

The JSON document (`--json`) is documented in README.md; keys are only ever added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cluster.clusterread import ClusterView, read_cluster
from cluster.coord import Coordination, CoordinationError, MemberEntry, NodeState, session_text
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.local.zookeeper_server import zookeeper_mode
from cluster.probe import PROBE_TIMEOUT, NodeProbe, endpoint_or_none, in_parallel, probe_nodes
from cluster.process import pid_outside
from cluster.target import ClusterNotFound, Target, open_session

ZOOKEEPER_TIMEOUT = 2.0  # seconds to reach ZooKeeper before the status says UNREACHABLE


@dataclass
class NodeStatus:
    name: str
    gearman: str | None
    store: str | None
    agent_pid: int | None  # local clusters only
    gearmand_pid: int | None  # local clusters only
    state: str
    queued_jobs: int | None
    store_items: int | None
    restarts: int
    deferred_jobs: int
    refused_jobs: int  # stored jobs every gearmand refused twice (a full store): they wait
    gearmand_started: float | None = None  # last (re)start of its gearmand (epoch's mtime)
    zk_session: str | None = None  # the agent's ZooKeeper session (holds its member record)
    zk_session_state: str | None = None  # "live"; "expiring" while a dead agent's lingers
    metrics: str | None = None  # the agent's Prometheus endpoint (host:port), if known
    gearmand_up: bool = False  # its gearmand answered the probe
    store_up: bool = False  # its memcached answered the probe
    twin: str | None = None  # its twin store (the one its gearmand does not write now), if any
    twin_items: int | None = None
    twin_up: bool | None = None  # its twin answered the probe (None: no twin)
    pending: str | None = None  # a twin silent at a start or take-over: its jobs wait for it
    version: str | None = None  # the agent's gearctl version


def collect(
    target: Target, session: Coordination | None = None, timeout: float = PROBE_TIMEOUT
) -> dict[str, Any]:
    """The status document. Without `session` one is opened and closed here; `--watch` passes
    one kept open. A local cluster whose ZooKeeper does not answer is still shown (processes
    and probes); any other cluster needs ZooKeeper (GearctlError)."""
    own_session = session is None
    if own_session:
        session = status_session(target)
    try:
        view = _read(session)
    finally:
        if own_session and session is not None:
            session.close()
    return assemble(target, view, timeout)


def status_session(target: Target) -> Coordination | None:
    """A session on the target's cluster; None for a local cluster whose ZooKeeper does not
    answer (its status is shown all the same), GearctlError for any other."""
    try:
        return open_session(target, ZOOKEEPER_TIMEOUT)
    except ClusterNotFound:
        raise
    except GearctlError:
        if target.local is None:
            raise
        return None


def _read(session: Coordination | None) -> ClusterView | None:
    if session is None or not session.connected:
        return None
    try:
        return read_cluster(session)
    except CoordinationError:  # the connection dropped while we read
        return None


def assemble(target: Target, view: ClusterView | None, timeout: float) -> dict[str, Any]:
    """The document from what ZooKeeper said (None: unreachable) and fresh probes."""
    local = target.local
    plan = {n.name: n for n in local.nodes} if local else {}
    members = view.members if view else {}
    stores = view.stores if view else {}
    names = sorted(set(plan) | set(members) | set(stores))

    def address(name: str, kind: str) -> str | None:
        entry = members.get(name)
        if entry is not None:
            return getattr(entry.record, kind)
        record = stores[name].record if name in stores else None
        if record is not None:
            return record.address if kind == "store" else record.gearman
        return getattr(plan[name], kind) if name in plan else None

    def twin(name: str, store: str | None) -> str | None:
        record = stores[name].record if name in stores else None
        if record is None:  # never started: a local plan names its twin
            return plan[name].twin if name in plan else None
        if record.twin is None:
            return None
        return next((a for a in record.addresses if a != store), None)

    addresses = []
    for name in names:
        store = address(name, "store")
        addresses.append((address(name, "gearman"), store, twin(name, store)))
    probes = probe_nodes(((endpoint_or_none(g), endpoint_or_none(s), endpoint_or_none(t))
                          for g, s, t in addresses), timeout)  # fmt: skip
    zk_hosts = target.zookeeper.split(",")
    modes = in_parallel(lambda host: _mode(host, timeout), zk_hosts)
    nodes = []
    for name, (gearman, store, twin_store), probe in zip(names, addresses, probes, strict=True):
        store_view = stores.get(name)
        node = _node(name, gearman, store, members.get(name), probe, target)
        if twin_store is not None:
            node.twin, node.twin_items = twin_store, probe.twin_items
            node.twin_up = probe.twin_items is not None
        node.gearmand_started = store_view.epoch_changed if store_view else None
        if store_view is not None and store_view.record is not None:
            node.pending = store_view.record.pending
        node.metrics = plan[name].metrics if name in plan else None
        nodes.append(asdict(node))
    return {
        "cluster": view.cluster if view else (local.cluster if local else target.cluster),
        "zookeeper": {
            "address": target.zookeeper,
            "reachable": view is not None,
            "members": [{"address": h, "mode": m} for h, m in zip(zk_hosts, modes, strict=True)],
        },
        "nodes": nodes,
        "stores": [stores[name].as_json() for name in sorted(stores)],
        "takeovers": view.takeovers if view else [],
        "takeover_paused": view.paused if view else False,
        "local": local is not None,
    }


def _mode(host: str, timeout: float) -> str | None:
    endpoint = endpoint_or_none(host) or endpoint_or_none(f"{host}:2181")
    return None if endpoint is None else zookeeper_mode(endpoint, timeout)


def _node(
    name: str,
    gearman: str | None,
    store: str | None,
    entry: MemberEntry | None,
    probe: NodeProbe,
    target: Target,
) -> NodeStatus:
    member = entry.record if entry else None
    agent_pid: int | None = None
    agent_alive = member is not None
    if target.local is not None:  # PIDs as this machine sees them (a netns host has its own)
        agent_pid = target.local.agent_pid(name)
        agent_alive = agent_pid is not None
    state = NodeState.STARTING.value if member is None else member.state
    if not agent_alive:
        state = NodeState.DOWN.value
    return NodeStatus(
        name=name,
        gearman=str(Endpoint.parse(gearman)) if gearman else None,
        store=store,
        agent_pid=agent_pid,
        gearmand_pid=pid_outside(member.gearmand_pid, agent_pid) if member and agent_pid else None,
        state=state,
        queued_jobs=probe.queued_jobs,
        store_items=probe.store_items,
        restarts=member.restarts if member else 0,
        deferred_jobs=member.deferred_jobs if member else 0,
        refused_jobs=member.refused_jobs if member else 0,
        zk_session=session_text(entry.session) if entry else None,
        zk_session_state=("live" if agent_alive else "expiring") if entry else None,
        gearmand_up=probe.functions is not None,
        store_up=probe.store_items is not None,
        version=member.version if member else None,
    )


def degraded(status: dict[str, Any]) -> list[str]:
    """Why the cluster is not fully serving (empty: every node serves, ZooKeeper answers)."""
    reasons = [] if status["zookeeper"]["reachable"] else ["ZooKeeper unreachable"]
    for node in status["nodes"]:
        if node["state"] != NodeState.SERVING:
            reasons.append(f"{node['name']} is {node['state']}")
        elif not node["gearmand_up"]:
            reasons.append(f"{node['name']}: gearmand does not answer")
        elif not node["store_up"]:
            reasons.append(f"{node['name']}: store does not answer")
        elif node.get("pending"):
            reasons.append(f"{node['name']}: twin store {node['pending']} pending (its jobs wait "
                           "until it answers)")  # fmt: skip
        elif node.get("twin_up") is False:
            reasons.append(f"{node['name']}: twin store {node['twin']} does not answer")
    if not status["nodes"]:
        reasons.append("no node")
    return reasons
