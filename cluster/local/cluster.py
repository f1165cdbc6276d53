"""`gearctl cluster up/down`: a whole cluster on this machine's loopback, for trying and testing.

Layout of `--dir` (default `.gearctl`):
    cluster.json            the plan (addresses) and the PIDs of every process `up` started
    zookeeper/              data, zoo-<myid>.cfg and logs of ZooKeeper (1 or 3 members)
    <node>/agent.toml       the node agent's configuration
    <node>/log/             agent, gearmand and memcached logs (memcached-twin.log: the twin store)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster import coord
from cluster.config import render_config
from cluster.coord import CoordinationError, NodeState
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, LaunchError
from cluster.local.memcached_server import DEFAULT_MEMORY_MB, start_memcached
from cluster.local.netns import host_argv
from cluster.local.zookeeper_server import (
    JARS,
    ZooKeeperLaunch,
    ZooKeeperMember,
    spawn_zookeeper,
    wait_zookeeper,
)
from cluster.process import (
    ProcessRef,
    children,
    is_program_on,
    log_tail,
    pid_inside,
    read_pidfile,
    require_binary,
    spawn,
    stop_pid,
    wait_until,
    write_pidfile,
)

DEFAULT_DIR = Path(".gearctl")
SERVING_TIMEOUT = 30.0
LOCAL_HOST = "127.0.0.1"
CLUSTER_NAME = "local"
DEFAULT_SESSION_TIMEOUT = 4.0
# The agent's watchdog deadline: half the session timeout, well below `timeout - margin`, so
# that the agent pings only after a heartbeat that leaves it that long (cluster.sdnotify).
WATCHDOG_SHARE = 0.5
STANDARD_PORTS = {
    "zookeeper": 2181,
    "zk-peer": 2888,
    "zk-election": 3888,
    "gearman": 4730,
    "store": 11211,
    "metrics": 9400,
    "twin": 11311,  # node i's twin store: 11311 + i (11211 + i are the first stores)
}
PORT_OFFSETS = {
    "zookeeper": 0,
    "zk-peer": 3,
    "zk-election": 6,
    "gearman": 10,
    "store": 110,
    "metrics": 210,
    "twin": 310,
}
PORT_BLOCK = max(PORT_OFFSETS.values()) + 100  # ports a `--port-base` cluster may use (100 nodes)

Progress = Callable[[str], None]


@dataclass
class NodePlan:
    name: str
    gearman: str
    store: str
    netns: str | None = None  # network namespace its agent (and so its gearmand) runs in
    metrics: str | None = None  # the agent's Prometheus endpoint (None in plans made before it)
    twin: str | None = None  # its twin store (None in plans made before twin stores)

    @property
    def stores(self) -> dict[str, str]:
        """Its memcached stores by process key kind: `store`, and `twin` when it has one."""
        return {"store": self.store} | ({"twin": self.twin} if self.twin else {})

    def as_dict(self) -> dict[str, str]:
        """Its `cluster.json` entry (`netns` only when set, so plans stay as they were)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Placement:
    """Where a new plan puts things; the default is everything on 127.0.0.1, in this namespace.

    `services` holds ZooKeeper and every memcached store. Node i's gearmand listens on
    `node_hosts[i]` (default: `services`), and its agent runs in network namespace
    `node_netns[i]` (default: none), which its gearmand inherits."""

    services: str = LOCAL_HOST
    node_hosts: tuple[str, ...] = ()
    node_netns: tuple[str | None, ...] = ()

    def node_host(self, index: int) -> str:
        return self.node_hosts[index] if index < len(self.node_hosts) else self.services

    def netns(self, index: int) -> str | None:
        return self.node_netns[index] if index < len(self.node_netns) else None


@dataclass
class LocalCluster:
    """The plan of a local cluster and the PIDs of what runs it, saved in `cluster.json`."""

    dir: Path
    cluster: str
    zookeeper: str
    nodes: list[NodePlan]
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    zookeeper_ensemble: tuple[ZooKeeperMember, ...] = ()  # empty: one standalone server
    processes: dict[str, ProcessRef] = field(default_factory=dict)
    spread: bool = True  # agents' [takeover] spread (`cluster up --spread/--no-spread`)
    store_mb: int = DEFAULT_MEMORY_MB  # each memcached's -m (a twin must hold the whole queue)

    @property
    def state_file(self) -> Path:
        return self.dir / "cluster.json"

    def node_dir(self, node: str) -> Path:
        return self.dir / node

    def save(self) -> None:
        data = {
            "cluster": self.cluster,
            "zookeeper": self.zookeeper,
            "nodes": [n.as_dict() for n in self.nodes],
            "session_timeout": self.session_timeout,
            "zookeeper_ensemble": [asdict(m) for m in self.zookeeper_ensemble],
            "processes": {k: asdict(ref) for k, ref in self.processes.items()},
            "spread": self.spread,
            "store_mb": self.store_mb,
        }
        with tempfile.NamedTemporaryFile("w", dir=self.dir, delete=False) as tmp:
            json.dump(data, tmp, indent=2)
        Path(tmp.name).replace(self.state_file)

    @classmethod
    def load(cls, directory: Path) -> LocalCluster | None:
        path = directory / "cluster.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                dir=directory,
                cluster=data["cluster"],
                zookeeper=data["zookeeper"],
                nodes=[NodePlan(**n) for n in data["nodes"]],
                session_timeout=float(data.get("session_timeout", DEFAULT_SESSION_TIMEOUT)),
                zookeeper_ensemble=tuple(
                    ZooKeeperMember(**m) for m in data.get("zookeeper_ensemble", [])
                ),
                processes={k: ProcessRef(**v) for k, v in data.get("processes", {}).items()},
                spread=bool(data.get("spread", False)),
                store_mb=int(data.get("store_mb", DEFAULT_MEMORY_MB)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GearctlError(f"{path} is damaged ({exc}); remove it to start afresh") from None

    @classmethod
    def plan(
        cls,
        directory: Path,
        nodes: int,
        port_base: int,
        session_timeout: float,
        zookeeper_members: int,
        placement: Placement = Placement(),
    ) -> LocalCluster:
        """Addresses for a new cluster: standard ports, or a block from `port_base`."""
        services = placement.services

        def port(kind: str, index: int) -> int:
            return (port_base + PORT_OFFSETS[kind] if port_base else STANDARD_PORTS[kind]) + index

        return cls(
            dir=directory,
            cluster=CLUSTER_NAME,
            zookeeper=",".join(
                f"{services}:{port('zookeeper', i)}" for i in range(zookeeper_members)
            ),
            nodes=[
                NodePlan(
                    name=f"node{i + 1}",
                    gearman=f"{placement.node_host(i)}:{port('gearman', i)}",
                    store=f"{services}:{port('store', i)}",
                    netns=placement.netns(i),
                    metrics=f"{placement.node_host(i)}:{port('metrics', i)}",
                    twin=f"{services}:{port('twin', i)}",
                )
                for i in range(nodes)
            ],
            session_timeout=session_timeout,
            zookeeper_ensemble=tuple(
                ZooKeeperMember(i + 1, services, port("zk-peer", i), port("zk-election", i))
                for i in range(zookeeper_members)
            )
            if zookeeper_members > 1
            else (),
        )

    def running(self, key: str) -> bool:
        ref = self.processes.get(key)
        return ref is not None and ref.alive()

    def agent_pid(self, node: str) -> int | None:
        """The PID of node's agent itself (the one child of its watchdog supervisor, whose PID
        `processes` holds), if it runs."""
        ref = self.processes.get(f"agent:{node}")
        if ref is None or not ref.alive():
            return None
        found = children(ref.pid)
        return found[0] if found else None

    def stop(self, key: str, progress: Progress, what: str) -> None:
        ref = self.processes.pop(key, None)
        if ref is not None and ref.alive():
            progress(f"stopping {what} pid {ref.pid}")
            ref.stop()


def check_prerequisites() -> None:
    """Fail before starting anything when a service's package is missing."""
    require_binary("gearmand", "gearman-job-server")
    require_binary("memcached", "memcached")
    require_binary("java", "default-jre-headless")
    missing = [jar for jar in JARS if not Path(jar).exists()]
    if missing:
        raise LaunchError(f"{', '.join(missing)} missing; install: apt-get install -y zookeeper")


def prepare_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise GearctlError(f"--dir {directory} is not writable: {exc.strerror}") from None


def up(
    directory: Path,
    nodes: int,
    port_base: int,
    progress: Progress,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    zookeeper_members: int = 1,
    placement: Placement = Placement(),
    spread: bool = True,
    serving_timeout: float = SERVING_TIMEOUT,
) -> LocalCluster:
    """Start whatever part of the cluster is not running; return once every node serves
    (within `serving_timeout`: a node restoring a large store takes longer).

    The plan (ports, session timeout, placement, spread take-over) is fixed by the first `up`
    of a directory."""
    if not 1.0 <= session_timeout <= 10.0:
        # the local ZooKeeper (tickTime 500 ms) grants sessions of 1 to 10 s
        raise GearctlError(f"--session-timeout must be within 1..10 s, not {session_timeout}")
    if zookeeper_members not in (1, 3):
        raise GearctlError(f"--zookeeper-members must be 1 or 3, not {zookeeper_members}")
    if nodes < 1:
        raise GearctlError(f"--nodes must be at least 1, not {nodes}")
    if port_base and not 1024 <= port_base <= 65000:
        raise GearctlError(f"--port-base must be 0 or within 1024..65000, not {port_base}")
    prepare_dir(directory)
    check_prerequisites()
    cluster = LocalCluster.load(directory)
    if cluster is None:
        cluster = LocalCluster.plan(
            directory, nodes, port_base, session_timeout, zookeeper_members, placement
        )
        cluster.spread = spread
    elif len(cluster.nodes) != nodes:
        raise GearctlError(
            f"{directory} holds a {len(cluster.nodes)}-node cluster; "
            f"run `gearctl cluster down --dir {directory}` and remove it to change the size"
        )
    started: list[str] = []
    try:
        _start_missing(cluster, started, progress)
        wait_serving(cluster, progress, serving_timeout)
    except BaseException:
        progress("start-up failed; stopping what this run started")
        for key in reversed(started):
            cluster.stop(key, progress, key)
        cluster.save()
        raise
    return cluster


def wait_serving(
    cluster: LocalCluster, progress: Progress, timeout: float = SERVING_TIMEOUT
) -> None:
    """Return once every node's agent reports `serving`; fail with the agent's log otherwise."""
    try:
        session = coord.connect(cluster.zookeeper, cluster.cluster, timeout, session_timeout=4.0)
    except CoordinationError:
        raise LaunchError(f"ZooKeeper {cluster.zookeeper} does not answer") from None
    try:
        deadline = time.monotonic() + timeout
        waiting = {n.name for n in cluster.nodes}
        while waiting:
            members = session.members()
            for name in sorted(waiting):
                agent_pid = cluster.processes[f"agent:{name}"].pid
                if not cluster.running(f"agent:{name}"):
                    reason = f"the agent (pid {agent_pid}) exited"
                    raise LaunchError(_agent_failure(cluster, name, reason))
                member = members.get(name)
                agent = cluster.agent_pid(name)  # the agent itself, under its supervisor
                # A record left by an earlier agent's session does not count.
                if (member and member.state == NodeState.SERVING and agent is not None
                        and member.agent_pid == pid_inside(agent)):  # fmt: skip
                    progress(f"{name}: serving on {member.gearman}")
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                reason = f"not serving after {timeout:.0f}s"
                raise LaunchError(_agent_failure(cluster, sorted(waiting)[0], reason))
            time.sleep(0.05)
    finally:
        session.close()


def _agent_failure(cluster: LocalCluster, node: str, reason: str) -> str:
    agent_log = cluster.node_dir(node) / "log" / "agent.log"
    gearmand_log = cluster.node_dir(node) / "log" / "gearmand.log"
    return (
        f"{node}: {reason}\nlast lines of {agent_log}:\n{log_tail(agent_log)}"
        f"\nlast lines of {gearmand_log}:\n{log_tail(gearmand_log, 5)}"
    )


def _start_missing(cluster: LocalCluster, started: list[str], progress: Progress) -> None:
    def record(key: str, pid: int) -> None:
        cluster.processes[key] = ProcessRef.of(pid)
        started.append(key)
        cluster.save()

    spawned = []
    for launch in zookeeper_launches(cluster):
        key = f"zookeeper:{launch.myid}"
        if not cluster.running(key):
            progress(f"starting ZooKeeper member {launch.myid} on {launch.endpoint}")
            proc = spawn_zookeeper(launch)
            record(key, proc.pid)
            spawned.append((launch, proc))
    for launch, proc in spawned:  # an ensemble serves only once a quorum is up
        wait_zookeeper(launch, proc)
    for node in cluster.nodes:
        node_dir = cluster.node_dir(node.name)
        for kind, address in node.stores.items():
            if not cluster.running(f"{kind}:{node.name}"):
                what = "twin store" if kind == "twin" else "store"
                progress(f"{node.name}: starting memcached {what} on {address}")
                name = "memcached" if kind == "store" else "memcached-twin"
                proc = start_memcached(
                    Endpoint.parse(address),
                    memory_mb=cluster.store_mb,
                    log_path=node_dir / "log" / f"{name}.log",
                    pid_path=node_dir / f"{name}.pid",
                )
                record(f"{kind}:{node.name}", proc.pid)
        key = f"agent:{node.name}"
        # An agent that just died leaves its supervisor for a moment: wait for it to follow.
        wait_until(lambda key=key, name=node.name: (
                       not cluster.running(key) or cluster.agent_pid(name) is not None),
                   timeout=10, what=f"{node.name}'s supervisor to follow its agent")  # fmt: skip
        if not cluster.running(key):
            progress(f"{node.name}: starting agent (gearmand on {node.gearman})")
            pid = start_agent(cluster, node)
            write_pidfile(node_dir / "agent.pid", pid)
            record(key, pid)


def start_agent(cluster: LocalCluster, node: NodePlan) -> int:
    """Start node's agent under its watchdog supervisor (cluster.watchdog), in its own host when
    it has a namespace (cluster.local.netns); returns the supervisor's PID."""
    config = write_agent_config(cluster, node)
    agent = [sys.executable, "-m", "cluster", "agent", "run", "--config", str(config)]
    seconds = f"{cluster.session_timeout * WATCHDOG_SHARE:g}"
    argv = [sys.executable, "-m", "cluster.watchdog", "--seconds", seconds, "--", *agent]
    if node.netns:
        argv = host_argv(node.netns, argv)
    proc = spawn(
        argv,
        log_path=cluster.node_dir(node.name) / "log" / "agent.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if not node.netns:
        return proc.pid
    # `unshare` waits outside the host; the supervisor is its one child (PID 1 inside).
    wait_until(lambda: bool(children(proc.pid)) or proc.poll() is not None, timeout=10,
               what=f"{node.name}'s host in namespace {node.netns}")  # fmt: skip
    found = children(proc.pid)
    if not found:
        raise LaunchError(f"{node.name}: its host in namespace {node.netns} did not start; see "
                          f"{cluster.node_dir(node.name) / 'log' / 'agent.log'}")  # fmt: skip
    return found[0]


def zookeeper_launches(cluster: LocalCluster) -> list[ZooKeeperLaunch]:
    """One launch per ZooKeeper member (a single standalone one without an ensemble)."""
    zk_dir = cluster.dir / "zookeeper"
    return [
        ZooKeeperLaunch(
            endpoint=Endpoint.parse(address),
            data_dir=zk_dir / f"data-{myid}",
            log_path=zk_dir / f"zookeeper-{myid}.log",
            pid_path=zk_dir / f"zookeeper-{myid}.pid",
            myid=myid,
            ensemble=cluster.zookeeper_ensemble,
        )
        for myid, address in enumerate(cluster.zookeeper.split(","), start=1)
    ]


def write_agent_config(cluster: LocalCluster, node: NodePlan) -> Path:
    """The node's agent.toml (no [metrics] nor twin for plans made before they existed)."""
    path = cluster.node_dir(node.name) / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_config(
            node=node.name,
            cluster=cluster.cluster,
            gearman=node.gearman,
            store=node.store,
            twin=node.twin,
            zookeeper=cluster.zookeeper,
            session_timeout=cluster.session_timeout,
            run_dir=cluster.node_dir(node.name).resolve(),
            metrics=Endpoint.parse(node.metrics) if node.metrics else None,
            spread=cluster.spread,
        )
    )
    return path


def down(directory: Path, progress: Progress) -> LocalCluster | None:
    """Stop every process `up` started, by PID: agents (and their gearmand), stores, ZooKeeper."""
    cluster = LocalCluster.load(directory)
    if cluster is None:
        return None
    for node in cluster.nodes:
        cluster.stop(f"agent:{node.name}", progress, f"{node.name} agent")
        # An agent killed with SIGKILL leaves its gearmand behind: stop that one too.
        pid = read_pidfile(cluster.node_dir(node.name) / "gearmand.pid")
        port = Endpoint.parse(node.gearman).port
        if pid and is_program_on(pid, "gearmand", port):
            progress(f"stopping {node.name} gearmand pid {pid} (its agent was gone)")
            stop_pid(pid)
    for node in cluster.nodes:
        for kind in node.stores:
            what = "memcached" if kind == "store" else "twin memcached"
            cluster.stop(f"{kind}:{node.name}", progress, f"{node.name} {what}")
    for launch in zookeeper_launches(cluster):
        cluster.stop(f"zookeeper:{launch.myid}", progress, f"ZooKeeper member {launch.myid}")
    cluster.save()
    return cluster
