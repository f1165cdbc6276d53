"""Failover drills: a real local cluster, a workload, one fault, and a ledger of every job.

A drill starts its own 3-node cluster on free loopback ports (or, with hosts "netns", each node
in a network namespace of its own), queues uniquely numbered background jobs (dashed function
names, all priorities, payloads of several sizes), injects one fault while foreground jobs go
through the failover Client (cluster.drill.workload.ForegroundLoad), waits until every
acknowledged job is queued on a live server again (time to recover), lets a worker drain
everything, and counts each unique (cluster.drill.workload.Ledger). It passes only with
lost = 0, unexpected = 0 and duplicated within the scenario's bound, for the foreground jobs also
with none failed.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cluster import spreaddrain
from cluster.coord import Coordination, PartRecord, PauseRecord
from cluster.drill.workload import (
    FOREGROUND_CLIENTS,
    FUNCTIONS,
    BackgroundWorkers,
    ForegroundLedger,
    ForegroundLoad,
    Job,
    Ledger,
    numbered_jobs,
    submit,
)
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, StoreError
from cluster.gearman.admin import is_serving
from cluster.gearman.client import BackgroundJob, Client, NoServerError
from cluster.gearman.protocol import BatchSubmitError, GearmanConnection
from cluster.gearmand_server import GearmandLaunch
from cluster.local import cluster as localcluster
from cluster.local import netns
from cluster.local.netns import HostNetwork
from cluster.local.status import collect, connect
from cluster.process import (
    ProcessRef,
    free_port_block,
    is_running,
    pid_inside,
    pid_namespace,
    require_binary,
    spawn,
    wait_until,
)
from cluster.restore import BATCH
from cluster.store import Store

Progress = Callable[[str], None]
RECOVERY_TIMEOUT = 180.0
FAULT_TIMEOUT = 30.0  # seconds a fault waits for what it brings about
HOSTS = ("local", "netns")  # every node in this namespace, or each in a namespace of its own
NODES = 3
# A foreground job whose server dies (or is cut off) after a worker ran it, before its result
# reached the client, is submitted again by the Client and runs again (a re-run, not a
# duplicate): at most one per client per gearmand lost, and no drill loses more than the
# cluster's three gearmands. Any other second run is a duplicate, and none is admitted.
FOREGROUND_RERUN_BOUND = FOREGROUND_CLIENTS * NODES
FOREGROUND_DUPLICATE_BOUND = 0


@dataclass
class DrillContext:
    """What a fault needs: the cluster, its status, and a timeline to write to."""

    directory: Path
    progress: Progress
    scenario: str = ""
    jobs: int = 0  # background jobs of the main workload
    started: float = field(default_factory=time.monotonic)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    network: HostNetwork | None = None  # the namespaces of a multi-host drill
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # drill's end
    violations: list[str] = field(default_factory=list)  # broken invariants besides the ledger
    extra_jobs: list[Job] = field(default_factory=list)  # background jobs submitted by the fault
    extra_acknowledged: set[str] = field(default_factory=set)
    extra_refused: set[str] = field(default_factory=set)  # submits the fault saw refused

    def event(self, text: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 3), text))
        self.progress(text)

    def violation(self, text: str) -> None:
        """An invariant broken: the drill goes on (to count the ledger) but fails."""
        self.violations.append(text)
        self.event(f"VIOLATION: {text}")

    def cluster(self) -> localcluster.LocalCluster:
        cluster = localcluster.LocalCluster.load(self.directory)
        assert cluster is not None
        return cluster

    def agent_log(self, name: str) -> str:
        path = self.cluster().node_dir(name) / "log" / "agent.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        cluster = localcluster.LocalCluster.load(self.directory)
        assert cluster is not None
        return collect(cluster)

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["name"] == name)

    def written_store(self, name: str) -> tuple[str, Endpoint]:
        """(`cluster up` process key, address) of the memcached node `name`'s gearmand writes:
        with twin stores, the one its store record names."""
        record = next(s for s in self.status()["stores"] if s["store"] == name)
        plan = next(n for n in self.cluster().nodes if n.name == name)
        kind = next((k for k, a in plan.stores.items() if a == record["address"]), "store")
        return f"{kind}:{name}", Endpoint.parse(plan.stores[kind])

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise GearctlError(f"drill: {what} did not happen within {timeout:.0f}s")

    def kill(self, pid: int | None, sig: int = signal.SIGKILL, what: str = "") -> None:
        """Send `sig`; a SIGKILL counts as done only once the process is dead (delivery is
        asynchronous, and a restart that still sees it alive would not replace it)."""
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if sig == signal.SIGKILL:
                wait_until(lambda: not is_running(pid), timeout=10, what=f"death of pid {pid}")
            self.event(f"{signal.Signals(sig).name} {what} pid {pid}")

    def kill_node(self, name: str, node: dict[str, Any] | None = None) -> None:
        """SIGKILL the node's agent and gearmand (`node`: its status entry, if already read)."""
        node = node or self.node(name)
        self.kill(node["agent_pid"], what=f"{name} agent")
        self.kill(node["gearmand_pid"], what=f"{name} gearmand")

    def restart_missing(self) -> None:
        cluster = localcluster.LocalCluster.load(self.directory)
        assert cluster is not None
        localcluster.up(self.directory, len(cluster.nodes), 0, self.progress)
        self.event("cluster up: missing agents restarted")


def kill_gearmand(ctx: DrillContext) -> None:
    ctx.kill(ctx.node("node1")["gearmand_pid"], what="node1 gearmand")


def kill_node(ctx: DrillContext) -> None:
    ctx.kill_node("node1")


def sigstop_gearmand(ctx: DrillContext) -> None:
    ctx.kill(ctx.node("node1")["gearmand_pid"], signal.SIGSTOP, "node1 gearmand")


def kill_agent_during_restore(ctx: DrillContext) -> None:
    ctx.kill(ctx.node("node1")["gearmand_pid"], what="node1 gearmand")
    node = ctx.wait("node1 restoring", lambda s: s["nodes"][0]["state"] == "restoring")["nodes"][0]
    ctx.kill(node["agent_pid"], what="node1 agent (during its restore)")
    ctx.restart_missing()


def kill_drainer(ctx: DrillContext) -> None:
    """Lose node1, then the survivor that drains it: mid-drain if the drain is still running,
    else just after (its own store then holds the drained jobs, and the last node takes both)."""
    ctx.kill_node("node1")
    status = ctx.wait("a take-over", lambda s: bool(s["takeovers"]))
    ctx.kill_node(status["takeovers"][0]["by"])


def kill_part_drainer(ctx: DrillContext) -> None:
    """A spread take-over of node1: SIGKILL the agent of the survivor that is not the claimer
    while it drains a part (a chunk in flight), its gearmand left running. Its part lease goes
    with its session and the claimer resumes the part; the survivor's own store (its gearmand,
    no longer its agent's) is taken over in turn, its gearmand shut down by the take-over rule.
    Should the claimer drain every part before the survivor starts one (a slow scan), the agent
    is killed after the take-over, and the timeline says so."""
    nodes = {n["name"]: n for n in ctx.status()["nodes"]}  # a status takes long: read once
    agents = {name: node["agent_pid"] for name, node in nodes.items()}
    ctx.kill_node("node1", nodes["node1"])
    with _zookeeper(ctx) as zk:
        plan = _wait_for(lambda: zk.spread_plan("node1"), "a spread plan for node1's store")
        takeover = _wait_for(lambda: zk.takeover_at(plan.takeover), "its take-over record")
        others = [name for name in plan.survivors if name != takeover.by]
        if not others:
            raise GearctlError(f"drill: the plan gives every part to its claimer {takeover.by} "
                               f"(survivors {plan.survivors}): is spread on?")  # fmt: skip
        victim = others[0]
        ctx.event(f"{takeover.by} claimed node1's store and spread it over "
                  f"{', '.join(plan.survivors)}; {victim} drains part "
                  f"{plan.survivors.index(victim)} first")  # fmt: skip

        def victim_draining() -> tuple[int | None, PartRecord | None] | None:
            """(part, its record) once the victim drains one; (None, None) once the plan ended."""
            records = spreaddrain.part_records(zk, "node1", plan)
            if None in records:
                return None, None
            return next(((i, r) for i, r in enumerate(records) if r and victim in r.drainers),
                        None)  # fmt: skip

        index, part = _wait_for(victim_draining, f"{victim} draining a part")
        ctx.kill(agents[victim], what=f"{victim} agent")
        after = None if index is None else zk.spread_part("node1", index)
        mid_part = after is not None and not after.done
        if part is None:
            ctx.event(f"{victim}'s agent killed after the take-over: the claimer drained every "
                      "part before it started one")  # fmt: skip
        else:
            ctx.event(f"{victim}'s agent killed {'mid-part' if mid_part else 'after its part'} "
                      f"({sum(part.moved)} jobs of part {index} recorded moved when it was seen "
                      "draining)")  # fmt: skip
        ended = _wait_for(lambda: (t := zk.takeover_at(plan.takeover)) and t.outcome != "running"
                          and t, "the end of the spread take-over", RECOVERY_TIMEOUT)  # fmt: skip
    ctx.event(f"take-over by {ended.by}: {ended.outcome_text}, {ended.jobs} jobs; "
              + "; ".join(f"part {p.part} by {' then '.join(p.drainers)}: {p.jobs} jobs"
                          for p in ended.parts))  # fmt: skip
    resumed = next((p for p in ended.parts if p.part == index), None)
    if mid_part and (resumed is None or resumed.drainers[-1] == victim or not resumed.done):
        ctx.violation(f"part {index}, whose drainer {victim} was killed, was not finished by "
                      f"another survivor: {resumed}")  # fmt: skip


def _wait_for(find: Callable[[], Any], what: str, timeout: float = FAULT_TIMEOUT) -> Any:
    """`find()`'s first truthy answer, asked every 10 ms for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := find()):
        if time.monotonic() > deadline:
            raise GearctlError(f"drill: {what} not seen within {timeout:.0f}s")
        time.sleep(0.01)
    return found


def restart_all_agents(ctx: DrillContext) -> None:
    for node in ctx.status()["nodes"]:
        ctx.kill(node["agent_pid"], what=f"{node['name']} agent")
    ctx.restart_missing()


def node_returns_during_drain(ctx: DrillContext) -> None:
    ctx.kill_node("node1")
    ctx.wait("a take-over", lambda s: bool(s["takeovers"]))
    ctx.restart_missing()


def zookeeper_member_lost(ctx: DrillContext) -> None:
    """Sessions move to the surviving members: no agent may fence, every store stays owned;
    then a gearmand death shows the agents still work through the smaller ensemble."""
    status = ctx.status()
    leader = next(m for m in status["zookeeper"]["members"] if m["mode"] == "leader")
    cluster = localcluster.LocalCluster.load(ctx.directory)
    assert cluster is not None
    myid = cluster.zookeeper.split(",").index(leader["address"]) + 1
    ctx.kill(cluster.processes[f"zookeeper:{myid}"].pid, what=f"ZooKeeper leader {myid}")
    ctx.wait("a new ZooKeeper leader", lambda s: any(
        m["mode"] == "leader" for m in s["zookeeper"]["members"]))  # fmt: skip
    kill_gearmand(ctx)


STORE_DOWN_FOR = 2.0  # seconds node1's store stays dead before it is started again
STORE_LOST_TIMEOUT = 10.0


def store_lost(ctx: DrillContext) -> None:
    """kill -9 node1's memcached. Its gearmand must run on with the jobs it holds in memory (the
    agent reports `store-lost` and never restarts it); a submit straight to node1 is refused,
    jobs submitted through the failover Client meanwhile go to the other nodes; the store is
    started again, empty, on the same port (as systemd would) and node1 serves again."""
    node = ctx.node("node1")
    gearmand_pid, restarts = node["gearmand_pid"], node["restarts"]
    lost_at = time.monotonic()
    key, address = ctx.written_store("node1")
    ctx.kill(ctx.cluster().processes[key].pid, what=f"node1 memcached {address}")
    ctx.wait("node1's agent reporting its store lost",
             lambda s: s["nodes"][0]["state"] == "store-lost", STORE_LOST_TIMEOUT)  # fmt: skip
    still = ctx.node("node1")
    ctx.event(f"node1 reported store-lost after {time.monotonic() - lost_at:.2f}s; gearmand "
              f"pid {still['gearmand_pid']} keeps {still['queued_jobs']} jobs queued in "
              "memory")  # fmt: skip
    _submit_straight_to_node1(ctx, Endpoint.parse(node["gearman"]))
    _submit_through_client(ctx, ctx.cluster())
    time.sleep(max(0.0, STORE_DOWN_FOR - (time.monotonic() - lost_at)))
    cluster = ctx.cluster()
    restarted_at = time.monotonic()
    localcluster.up(ctx.directory, len(cluster.nodes), 0, lambda _text: None)
    ctx.event("node1's memcached started again, empty, on its port (as systemd would); node1 "
              f"serving again {time.monotonic() - restarted_at:.2f}s later")  # fmt: skip
    node = ctx.node("node1")
    if (node["gearmand_pid"], node["restarts"]) != (gearmand_pid, restarts):
        ctx.violation(f"node1's gearmand was restarted (pid {gearmand_pid} -> "
                      f"{node['gearmand_pid']}): jobs only its memory held are gone")  # fmt: skip
    else:
        ctx.event(f"node1's gearmand pid {gearmand_pid} never restarted")


TWIN_SILENT_FOR = 3.0  # seconds node1's stopped twin stays stopped once node1 serves again


def twin_silent(ctx: DrillContext) -> None:
    """SIGSTOP the twin memcached node1's gearmand writes (it holds node1's jobs), then kill -9
    that gearmand: the agent starts a new gearmand on the other twin at once (it serves, the
    stopped twin `pending`); after SIGCONT the agent restores the pending twin's jobs into the
    running gearmand, each once, and logs no LOST (the twin was stopped, not restarted)."""
    node = ctx.node("node1")
    key, address = ctx.written_store("node1")
    pid = ctx.cluster().processes[key].pid
    ctx.kill(pid, signal.SIGSTOP, f"node1 memcached {address}")
    try:  # resumed whatever happens, before the cluster is stopped
        ctx.kill(node["gearmand_pid"], what="node1 gearmand")
        stopped_at = time.monotonic()
        ctx.wait("node1 serving from its other twin, the stopped one pending",
                 lambda s: s["nodes"][0]["state"] == "serving"
                 and s["nodes"][0]["pending"] == str(address), RECOVERY_TIMEOUT)  # fmt: skip
        serving = ctx.node("node1")
        ctx.event(f"node1 serves on {serving['store']} {time.monotonic() - stopped_at:.2f}s "
                  f"after the kill, twin {address} pending")  # fmt: skip
        time.sleep(TWIN_SILENT_FOR)
    finally:
        ctx.kill(pid, signal.SIGCONT, f"node1 memcached {address}")
    resumed_at = time.monotonic()
    ctx.wait("node1's pending twin restored",
             lambda s: s["nodes"][0]["state"] == "serving" and s["nodes"][0]["pending"] is None,
             RECOVERY_TIMEOUT)  # fmt: skip
    ctx.event(f"node1's pending twin restored {time.monotonic() - resumed_at:.2f}s after SIGCONT")
    if "LOST" in ctx.agent_log("node1"):
        ctx.violation(f"node1's agent logged twin {address} LOST: it was stopped, not restarted")


STORE_FULL_ITEM = 50_000  # bytes of each item that fills node1's store, and of each big job
STORE_FULL_ROOM = 20  # fillers deleted again: room for about so many big jobs
STORE_FULL_BIG = 60  # big jobs the workload pushes, each followed by small ones


def store_full(ctx: DrillContext) -> None:
    """node1's store fills up with 50 kB items that are not gearmand's (someone else's data,
    which the restore must skip and report) until memcached (-M) refuses one, and
    STORE_FULL_ROOM of them are deleted again. The workload then pushes it past full: a
    pipeline of big jobs, each followed by small ones, straight to node1; gearmand refuses big
    jobs and goes on, and each refused submit counts as refused, never acknowledged. node1's
    gearmand is then killed: its agent restores into the full store, and the jobs it cannot
    hold there go to the other nodes (every job once)."""
    store = Store(ctx.written_store("node1")[1])
    fillers = 0
    with contextlib.suppress(StoreError):  # memcached -M: out of memory, nothing evicted
        while True:
            store.set(f"drill-filler-{fillers}", b"f" * STORE_FULL_ITEM, 0)
            fillers += 1
    for n in range(STORE_FULL_ROOM):
        store.delete(f"drill-filler-{fillers - 1 - n}")
    store.close()
    ctx.event(f"node1's store full after {fillers} items of {STORE_FULL_ITEM:,} bytes that are "
              f"not gearmand's; {STORE_FULL_ROOM} deleted again")  # fmt: skip
    sizes = ("big", "small", "small") * STORE_FULL_BIG
    jobs = [Job(FUNCTIONS[n % 3], f"{ctx.scenario}-{size}-{n}",
                (b"B" * STORE_FULL_ITEM) if size == "big" else b"small %d" % n, "normal")
            for n, size in enumerate(sizes)]  # fmt: skip
    ctx.extra_jobs.extend(jobs)
    with GearmanConnection(Endpoint.parse(ctx.node("node1")["gearman"])) as conn:
        try:
            handles = conn.submit_background_many(
                (job.function, job.unique, job.payload, job.priority) for job in jobs)  # fmt: skip
        except BatchSubmitError as exc:
            handles = exc.handles
    ctx.extra_acknowledged.update(job.unique for job, h in zip(jobs, handles, strict=True) if h)
    ctx.extra_refused.update(job.unique for job, h in zip(jobs, handles, strict=True) if not h)
    ctx.event(f"pushed past full: node1 acknowledged {len(jobs) - len(ctx.extra_refused)} and "
              f"refused {len(ctx.extra_refused)} of {len(jobs)} pipelined jobs")  # fmt: skip
    if not ctx.extra_refused:
        ctx.violation("node1's full store refused no job: the drill did not fill it")
    restarts = ctx.node("node1")["restarts"]
    kill_gearmand(ctx)
    ctx.wait("node1 serving again", lambda s: s["nodes"][0]["state"] == "serving"
             and s["nodes"][0]["restarts"] > restarts, RECOVERY_TIMEOUT)  # fmt: skip
    for line in ctx.agent_log("node1").splitlines():
        if "refused" in line or "not job keys" in line or "went to other" in line:
            ctx.event(f"node1 agent: {line.split(' ', 3)[-1][:200]}")


def _submit_straight_to_node1(ctx: DrillContext, gearman: Endpoint) -> None:
    """A plain client that knows only node1: gearmand 1.1.20 answers QUEUE_ERROR."""
    job = Job(FUNCTIONS[0], f"{ctx.scenario}-straight-0", b"straight to node1", "normal")
    ctx.extra_jobs.append(job)
    try:
        with GearmanConnection(gearman) as conn:
            conn.submit_background(job.function, job.payload, unique=job.unique)
    except GearctlError as exc:
        ctx.extra_refused.add(job.unique)
        ctx.event(f"a submit straight to node1 is refused ({exc})")
        return
    ctx.extra_acknowledged.add(job.unique)
    ctx.event("a submit straight to node1 was acknowledged (it must run like the others)")


def _submit_through_client(ctx: DrillContext, cluster: localcluster.LocalCluster) -> None:
    """Background jobs through the failover Client (it follows the live servers in ZooKeeper)."""
    jobs = numbered_jobs(max(1, ctx.jobs // 10), prefix=f"{ctx.scenario}-during")
    ctx.extra_jobs.extend(jobs)
    specs = [BackgroundJob(j.function, j.payload, j.unique, j.priority) for j in jobs]
    with Client(zookeeper=cluster.zookeeper, cluster=cluster.cluster) as client:
        handles: list[bytes | None]
        try:
            handles = list(client.submit_background_many(specs))
        except NoServerError as exc:
            handles = exc.handles
        servers = ", ".join(str(s) for s in client.servers())
    acknowledged = sum(map(bool, handles))
    ctx.extra_acknowledged.update(j.unique for j, h in zip(jobs, handles, strict=True) if h)
    ctx.event(f"{acknowledged} of {len(jobs)} jobs submitted meanwhile through the failover "
              f"Client acknowledged (live servers: {servers})")  # fmt: skip


PARTITION_TIMEOUT = 30.0
PARTITION_JITTER = 1.5  # seconds: the partition falls at a random point of this span


def partition_node(ctx: DrillContext) -> None:
    """Cut node1's host off the bridge; it must fence before its session expires, a survivor
    must find its gearmand unreachable (dead by the lease rule: its session expired) and drain
    its store; after the heal node1 must come back under a new session and serve only once the
    drain is over."""
    network = ctx.network
    assert network is not None, "partition-node runs on a test network"
    cluster = ctx.cluster()
    node1 = cluster.nodes[0]
    assert node1.netns is not None
    host = network.host(node1.netns)
    gearmand_pid = ctx.node("node1")["gearmand_pid"]
    zk = connect(cluster)
    if zk is None:
        raise GearctlError("drill: ZooKeeper does not answer")
    try:
        session = zk.member_entry("node1").session
        log_before = len(ctx.agent_log("node1"))
        # At a random moment of node1's ZooKeeper traffic (its take-over scans run every second).
        time.sleep(random.uniform(0.0, PARTITION_JITTER))
        network.partition(host.name)
        partitioned_at = time.monotonic()
        ctx.event(f"partition: node1 ({host.name}, {host.address}) cut off from ZooKeeper and its "
                  f"peers ({host.veth_root} down)")  # fmt: skip
        fenced_at, expired_at = _watch_fence_and_expiry(ctx, zk, gearmand_pid)
        lines = ctx.agent_log("node1")[log_before:].splitlines()
        reasons = [line.split("fencing: ", 1)[1] for line in lines if "fencing: " in line]
        reason = reasons[0] if reasons else "no fencing line in node1's agent log"
        if expired_at <= fenced_at:
            ctx.violation(f"node1's session expired {fenced_at - expired_at:.2f}s before its agent "
                          f"fenced gearmand ({reason}, {fenced_at - partitioned_at:.2f}s after "
                          "the partition)")  # fmt: skip
        else:
            ctx.event(f"fenced {expired_at - fenced_at:.2f}s before the session expired ({reason})")
        takeover = _wait_takeover(ctx, zk, lambda t: True)
        ctx.event(f"take-over of node1's store by {takeover['by']} started")
        _check_partition(ctx, host, cluster)
        if "watchdog: pid" in ctx.agent_log("node1")[log_before:]:
            # a fenced agent pings its watchdog: a kill means its guard thread stopped (blocked)
            ctx.violation("node1's watchdog killed its agent during the partition, after the fence")
        network.heal(host.name)
        ctx.event(f"heal: {host.veth_root} up")
        takeover = _wait_takeover(ctx, zk, lambda t: t["outcome"] != "running")
        ctx.event(f"take-over by {takeover['by']}: {takeover['outcome']}, {takeover['jobs']} jobs "
                  f"in {takeover['seconds']:.2f}s")  # fmt: skip
        how = _takeover_how(ctx, takeover)
        if "dead by the lease rule" not in how:
            ctx.violation(f"{takeover['by']} took over without the lease rule: {how}")
        ctx.event(f"{takeover['by']}: {how}")
        _wait_node1_back(ctx, zk, session, takeover, log_before)
    finally:
        zk.close()


def _watch_fence_and_expiry(
    ctx: DrillContext, zk: Coordination, gearmand_pid: int
) -> tuple[float, float]:
    """(when node1's gearmand died, when its member record vanished), polled every 10 ms."""
    fenced_at = expired_at = None
    deadline = time.monotonic() + PARTITION_TIMEOUT
    while fenced_at is None or expired_at is None:
        if time.monotonic() > deadline:
            raise GearctlError("drill: node1 neither fenced nor expired within "
                               f"{PARTITION_TIMEOUT:.0f}s of the partition")  # fmt: skip
        if fenced_at is None and not is_running(gearmand_pid):
            fenced_at = time.monotonic()
            ctx.event(f"node1's agent fenced: gearmand pid {gearmand_pid} gone")
        if expired_at is None and zk.member_entry("node1") is None:
            expired_at = time.monotonic()
            ctx.event("survivors see node1's session expired (member record gone)")
        time.sleep(0.01)
    return fenced_at, expired_at


def _wait_takeover(
    ctx: DrillContext, zk: Coordination, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + PARTITION_TIMEOUT
    while time.monotonic() < deadline:
        history = [t.as_json() for t in zk.takeover_history()]
        found = [t for t in history if t["store"] == "node1" and done(t)]
        if found:
            return found[0]
        time.sleep(0.02)
    raise GearctlError(f"drill: no take-over of node1's store within {PARTITION_TIMEOUT:.0f}s")


def _check_partition(ctx: DrillContext, host: netns.Host, cluster: Any) -> None:
    """The cut really blocks TCP both ways: new connections time out in each direction."""
    gearman = Endpoint.parse(cluster.nodes[0].gearman)
    zookeeper = Endpoint.parse(cluster.zookeeper.split(",")[0])
    results: dict[str, bool] = {}
    probes = {
        "bridge -> node1 gearmand": (None, gearman),
        "node1 -> ZooKeeper": (host.name, zookeeper),
    }  # fmt: skip
    threads = [
        threading.Thread(target=lambda k=k, ns=ns, e=e: results.__setitem__(
            k, netns.tcp_reachable(ns, e.host, e.port, 0.5)))
        for k, (ns, e) in probes.items()
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(results.values()):
        raise GearctlError(f"drill: the partition does not block TCP: {results}")
    ctx.event("partition checked: TCP connects time out both ways (" + ", ".join(probes) + ")")


def _wait_node1_back(
    ctx: DrillContext,
    zk: Coordination,
    old_session: int,
    takeover: dict[str, Any],
    log_before: int,
) -> None:
    """node1 serves again under a new session, with a gearmand started after the drain."""
    deadline = time.monotonic() + PARTITION_TIMEOUT
    while time.monotonic() < deadline:
        node = ctx.node("node1")
        entry = zk.member_entry("node1")
        if (node["state"] == "serving" and node["gearmand_pid"] and entry is not None
                and entry.session != old_session):  # fmt: skip
            break
        time.sleep(0.05)
    else:
        tail = "\n".join(ctx.agent_log("node1").splitlines()[-25:])
        raise GearctlError(
            f"drill: node1 not serving again {PARTITION_TIMEOUT:.0f}s after heal; the last lines "
            f"of its agent's log:\n{tail}"
        )
    pid = node["gearmand_pid"]
    started = psutil.Process(pid).create_time()
    if started < takeover["finished"]:
        ctx.violation(f"node1's gearmand pid {pid} started during the drain of its store")
    log = ctx.agent_log("node1")[log_before:]
    waited = "store node1 is held by" in log
    ctx.event(f"node1 back: new session {entry.session:#x}, gearmand pid {pid} serving "
              f"{started - takeover['finished']:.2f}s after the drain ended"
              + (" (it waited while the store was drained)" if waited else ""))  # fmt: skip


def _node1_host(ctx: DrillContext) -> tuple[HostNetwork, netns.Host]:
    network = ctx.network
    assert network is not None, f"{ctx.scenario} runs on network-namespace hosts"
    node1 = ctx.cluster().nodes[0]
    assert node1.netns is not None
    return network, network.host(node1.netns)


@contextlib.contextmanager
def _zookeeper(ctx: DrillContext) -> Iterator[Coordination]:
    zk = connect(ctx.cluster())
    if zk is None:
        raise GearctlError("drill: ZooKeeper does not answer")
    try:
        yield zk
    finally:
        zk.close()


def _wait_member_gone(ctx: DrillContext, zk: Coordination) -> float:
    """When node1's member record vanished (its session expired)."""
    deadline = time.monotonic() + FAULT_TIMEOUT
    while zk.member_entry("node1") is not None:
        if time.monotonic() > deadline:
            raise GearctlError(f"drill: node1's session still there {FAULT_TIMEOUT:.0f}s after "
                               "the fault")  # fmt: skip
        time.sleep(0.01)
    ctx.event("node1's session (member record) gone")
    return time.monotonic()


def _takeover_how(ctx: DrillContext, takeover: dict[str, Any]) -> str:
    """The survivor's own words for why node1's old gearmand counted as dead."""
    marker = "taking over store node1: "

    def lines() -> list[str]:
        return [ln for ln in ctx.agent_log(takeover["by"]).splitlines() if marker in ln]

    # The survivor writes the take-over record just before that log line.
    wait_until(lambda: bool(lines()), timeout=10, what=f"the take-over line in "
               f"{takeover['by']}'s log")  # fmt: skip
    return re.split("; (?:draining|spreading) ", lines()[-1].split(marker, 1)[1])[0]


def host_down(ctx: DrillContext) -> None:
    """node1's host dies: every process in it killed, its link down (its address times out,
    no RST); a survivor must take its store over by the lease rule alone."""
    network, host = _node1_host(ctx)
    with _zookeeper(ctx) as zk:
        died = time.time()
        killed = network.power_off(host.name)
        ctx.event(f"host {host.name} ({host.address}) powered off: {len(killed)} processes "
                  f"killed, {host.veth_root} down")  # fmt: skip
        takeover = _wait_takeover(ctx, zk, lambda t: True)
        ctx.event(f"take-over of node1's store by {takeover['by']} started "
                  f"{takeover['started'] - died:.2f}s after the host died (session timeout "
                  f"{ctx.cluster().session_timeout:g}s)")  # fmt: skip
        ctx.event(f"{takeover['by']}: {_takeover_how(ctx, takeover)}")


def agent_hang(ctx: DrillContext) -> None:
    """SIGSTOP node1's agent: its watchdog must kill agent and gearmand before the session
    expires; a survivor then takes the store over."""
    node = ctx.node("node1")
    with _zookeeper(ctx) as zk:
        ctx.kill(node["agent_pid"], signal.SIGSTOP, "node1 agent")
        deadline = time.monotonic() + FAULT_TIMEOUT
        while is_running(node["gearmand_pid"]):
            if time.monotonic() > deadline:
                raise GearctlError("drill: node1's gearmand still runs beside its hung agent")
            time.sleep(0.01)
        killed_at = time.monotonic()
        ctx.event(f"node1's gearmand pid {node['gearmand_pid']} gone")
        expired_at = _wait_member_gone(ctx, zk)
        if "watchdog: pid" not in ctx.agent_log("node1"):
            ctx.violation("node1's gearmand died, but not by its watchdog")
        if expired_at <= killed_at:
            ctx.violation("node1's session expired before its watchdog killed agent and gearmand")
        else:
            ctx.event(f"the watchdog killed agent and gearmand {expired_at - killed_at:.2f}s "
                      "before the session expired")  # fmt: skip
        takeover = _wait_takeover(ctx, zk, lambda t: True)
        ctx.event(f"{takeover['by']}: {_takeover_how(ctx, takeover)}")


def session_blip(ctx: DrillContext) -> None:
    """node1's session expires and a new one opens at once: node1 is cut off ZooKeeper (take-over
    paused, so that only node1 may own its store) until its member record is gone, then healed;
    it must have fenced, and must register again and serve under a new session."""
    network, host = _node1_host(ctx)
    with _zookeeper(ctx) as zk:
        zk.pause_takeover(PauseRecord())
        session = zk.member_entry("node1").session
        gearmand_pid = ctx.node("node1")["gearmand_pid"]
        log_before = len(ctx.agent_log("node1"))
        network.partition(host.name)
        ctx.event(f"node1 cut off (take-over paused); session {session:#x}")
        fenced_at, expired_at = _watch_fence_and_expiry(ctx, zk, gearmand_pid)
        network.heal(host.name)
        ctx.event("healed at once: node1's client finds its session expired and opens a new one")
        if expired_at <= fenced_at:
            ctx.violation("node1's session expired before its agent fenced gearmand")
        zk.resume_takeover()
        deadline = time.monotonic() + FAULT_TIMEOUT
        while True:
            node, entry = ctx.node("node1"), zk.member_entry("node1")
            if node["state"] == "serving" and entry is not None and entry.session != session:
                break
            if time.monotonic() > deadline:
                raise GearctlError("drill: node1 not serving under a new session after the blip")
            time.sleep(0.05)
        log = ctx.agent_log("node1")[log_before:]
        how = "replaced" if "was replaced by" in log else "lost"
        ctx.event(f"node1 registered again (session {entry.session:#x}, noticed as {how}) "
                  f"and serves with gearmand pid {node['gearmand_pid']}")  # fmt: skip


def fencing_failed(ctx: DrillContext) -> None:
    """node1's host loses its agent, but a gearmand detached from any agent keeps answering on
    node1's address (with node1's store) after the session expired. The survivor must send it
    gearmand's admin `shutdown`; Debian's gearmand 1.1.20 does not know the command, so it must
    then refuse the take-over loudly (a `refused` take-over record) and wait; once the operator
    stops that gearmand it takes the store over."""
    _network, host = _node1_host(ctx)
    cluster = ctx.cluster()
    node1 = cluster.nodes[0]
    with _zookeeper(ctx) as zk:
        zk.pause_takeover(PauseRecord())  # no take-over before the impostor is up
        ctx.kill(cluster.processes["agent:node1"].pid, what="node1's agent and its supervisor")
        launch = GearmandLaunch(
            endpoint=Endpoint.parse(node1.gearman), store=Endpoint.parse(node1.store),
            prefix="gdetached_", log_path=ctx.directory / "detached-gearmand.log",
            pid_path=ctx.directory / "detached-gearmand.pid", threads=1, buckets=991,
        )  # fmt: skip
        binary = require_binary("gearmand", "gearman-job-server")
        detached = spawn(netns.exec_argv(host.name, launch.argv(binary)),
                         log_path=ctx.directory / "detached-gearmand.stdout.log")  # fmt: skip
        detached_ref = ProcessRef.of(detached.pid)
        ctx.stack.callback(detached_ref.stop)
        wait_until(lambda: is_serving(launch.endpoint), timeout=10, what="detached gearmand")
        ctx.event(f"a gearmand detached from any agent (pid {detached.pid}) answers on "
                  f"{launch.endpoint} with node1's store")  # fmt: skip
        _wait_member_gone(ctx, zk)
        zk.resume_takeover()
        refused = _wait_takeover(ctx, zk, lambda t: t["outcome"].startswith("refused"))
        ctx.event(f"{refused['by']} {refused['outcome']}")
        if any(t["store"] == "node1" and t["outcome"].startswith("done")
               for t in (r.as_json() for r in zk.takeover_history())):  # fmt: skip
            ctx.violation("node1's store was drained while its old gearmand still answered")
        if not detached_ref.alive():
            ctx.event("the detached gearmand stopped on admin shutdown")
        else:
            detached_ref.stop()
            ctx.event(f"operator: detached gearmand pid {detached.pid} stopped by hand")
        takeover = _wait_takeover(ctx, zk, lambda t: t["outcome"].startswith("done"))
        ctx.event(f"{takeover['by']}: {_takeover_how(ctx, takeover)}")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fault: Callable[[DrillContext], None]
    duplicate_bound: int = 0
    zookeeper_members: int = 1
    isolated_nodes: int = 0  # nodes 1..n each in a network namespace of their own (any hosts)
    spread: bool = False  # needs spread take-overs (`[takeover] spread`), whatever run() is told


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("kill-gearmand", "kill -9 node1's gearmand; its agent restores", kill_gearmand),
        Scenario("kill-node", "kill -9 node1's agent and gearmand; a survivor drains", kill_node),
        Scenario("sigstop-gearmand", "SIGSTOP node1's gearmand (a hang)", sigstop_gearmand),
        Scenario("kill-agent-during-restore", "kill -9 node1's agent while it restores",
                 kill_agent_during_restore, duplicate_bound=BATCH),
        Scenario("kill-drainer", "lose node1, then the survivor draining it",
                 kill_drainer, duplicate_bound=BATCH),
        Scenario("kill-part-drainer", "spread take-over of node1: kill -9 the agent of the "
                 "survivor draining a part that is not the claimer", kill_part_drainer,
                 duplicate_bound=BATCH, spread=True),
        Scenario("restart-all-agents", "kill -9 every agent at once, start them again",
                 restart_all_agents),
        Scenario("zookeeper-member-lost", "kill -9 the ZooKeeper leader of a 3-member ensemble, "
                 "then node1's gearmand", zookeeper_member_lost, zookeeper_members=3),
        Scenario("node-returns-during-drain", "lose node1, bring it back while it is drained",
                 node_returns_during_drain),
        Scenario("partition-node", "on three network-namespace hosts: cut node1 off ZooKeeper "
                 "and its peers, then heal", partition_node, isolated_nodes=NODES),
        Scenario("store-lost", "kill -9 node1's memcached; start it again on its port",
                 store_lost),
        Scenario("host-down", "on three hosts: node1's host dies (every process killed, its "
                 "link down)", host_down, isolated_nodes=NODES),
        Scenario("agent-hang", "on three hosts: SIGSTOP node1's agent; its watchdog kills it",
                 agent_hang, isolated_nodes=NODES),
        Scenario("session-blip", "on three hosts: node1's session expires and a new one opens at "
                 "once", session_blip, isolated_nodes=NODES),
        Scenario("fencing-failed", "on three hosts: a gearmand detached from its agent answers "
                 "after the session expired", fencing_failed, isolated_nodes=NODES),
        Scenario("store-full", "fill node1's store, push jobs past full, kill -9 its gearmand",
                 store_full),
        Scenario("twin-silent", "SIGSTOP the twin store node1's gearmand writes, kill -9 that "
                 "gearmand; SIGCONT once node1 serves from the other twin", twin_silent),
    )
}  # fmt: skip


@dataclass
class DrillResult:
    scenario: str
    jobs: int
    ledger: Ledger
    duplicate_bound: int
    recovery_seconds: float
    timeline: list[tuple[float, str]]
    violations: list[str] = field(default_factory=list)
    foreground: ForegroundLedger | None = None
    hosts: str = "local"

    @property
    def passed(self) -> bool:
        ledger, fg = self.ledger, self.foreground
        return (
            not self.violations
            and ledger.lost == 0
            and ledger.unexpected == 0
            and (ledger.duplicated <= self.duplicate_bound)
            and (fg is None or (fg.lost, fg.unexpected, fg.failed) == (0, 0, 0))
            and (fg is None or fg.duplicated <= FOREGROUND_DUPLICATE_BOUND)
            and (fg is None or fg.reruns <= FOREGROUND_RERUN_BOUND)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "jobs": self.jobs,
            "passed": self.passed,
            **asdict(self.ledger),
            "duplicate_bound": self.duplicate_bound,
            "recovery_seconds": self.recovery_seconds,
            "timeline": [{"t": t, "event": e} for t, e in self.timeline],
            "violations": self.violations,
            "hosts": self.hosts,
            "foreground": None
            if self.foreground is None
            else {
                **asdict(self.foreground),
                "duplicate_bound": FOREGROUND_DUPLICATE_BOUND,
                "rerun_bound": FOREGROUND_RERUN_BOUND,
            },
        }


def run(
    scenario_name: str, jobs: int, progress: Progress, hosts: str = "local", *, spread: bool = True
) -> DrillResult:
    """Run one drill on a fresh local cluster, which is stopped again whatever happens.
    `spread`: its agents spread a take-over over every survivor (`[takeover] spread`, the
    default; a scenario that needs it, kill-part-drainer, spreads whatever this says).

    `hosts` "netns" runs each node (agent and gearmand) in a network namespace of its own on a
    test bridge (cluster.local.netns); ZooKeeper and the stores stay in this namespace, on the
    bridge.
    Where namespaces cannot be made, NetnsError says why before anything is started."""
    scenario = SCENARIOS[scenario_name]
    if hosts not in HOSTS:
        raise GearctlError(f"--hosts must be one of {', '.join(HOSTS)}, not {hosts!r}")
    isolated = NODES if hosts == "netns" else scenario.isolated_nodes
    with contextlib.ExitStack() as stack:
        if isolated:
            HostNetwork.check_possible()
        directory = Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f"gearctl-drill-{scenario_name}-")))  # fmt: skip
        ctx = DrillContext(directory, progress, scenario=scenario_name, jobs=jobs)
        stack.enter_context(ctx.stack)
        placement = localcluster.Placement()
        if isolated:
            # Torn down last (after the cluster is stopped), even when anything below fails.
            network = ctx.network = stack.enter_context(HostNetwork(isolated))
            members = network.members
            placement = localcluster.Placement(
                services=network.bridge_address,
                node_hosts=tuple(h.address for h in members),
                node_netns=tuple(h.name for h in members),
            )
        base = free_port_block(localcluster.PORT_BLOCK, placement.services)
        localcluster.up(
            directory,
            NODES,
            base,
            lambda _text: None,
            zookeeper_members=scenario.zookeeper_members,
            placement=placement,
            spread=spread or scenario.spread,
        )
        stack.callback(localcluster.down, directory, lambda _text: None)
        ctx.event("cluster of 3 nodes serving")
        if ctx.network is not None:
            ctx.event(", ".join(f"{n.name} in namespace {n.netns} on {n.gearman}"
                                for n in ctx.cluster().nodes if n.netns)
                      + f"; ZooKeeper and stores on {placement.services}")  # fmt: skip
            ctx.event(_hosts_seen(ctx))
        result = _run(scenario, jobs, ctx)
        result.hosts = "netns" if isolated else "local"
        return result
    raise AssertionError("unreachable")


def _hosts_seen(ctx: DrillContext) -> str:
    """How each node's host looks from inside: its hostname, and its agent's PID there."""
    seen = []
    for node in ctx.cluster().nodes:
        pid = ctx.cluster().agent_pid(node.name)
        assert pid is not None
        argv = ["nsenter", "--target", str(pid), "--uts", "hostname"]
        hostname = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        seen.append(f"{node.name}: hostname {hostname}, agent pid {pid} is pid "
                    f"{pid_inside(pid)} there, PID namespace {pid_namespace(pid)}")  # fmt: skip
    return f"hosts (this machine: {socket.gethostname()}, PID namespace {pid_namespace()}): " + (
        "; ".join(seen)
    )


def _run(scenario: Scenario, jobs: int, ctx: DrillContext) -> DrillResult:
    workload = numbered_jobs(jobs, prefix=scenario.name)
    target = Endpoint.parse(ctx.node("node1")["gearman"])
    acknowledged = submit(target, workload)
    ctx.event(f"{acknowledged} of {jobs} jobs acknowledged by node1")
    # Workers grab and run jobs on every node through the fault, as they would in production.
    cluster = ctx.cluster()
    endpoints = [Endpoint.parse(node.gearman) for node in cluster.nodes]
    with BackgroundWorkers(endpoints, FUNCTIONS, cluster.zookeeper, cluster.cluster) as workers:
        return _inject_and_count(scenario, jobs, ctx, workload, acknowledged, workers)


def _inject_and_count(
    scenario: Scenario,
    jobs: int,
    ctx: DrillContext,
    workload: list[Job],
    acknowledged: int,
    workers: BackgroundWorkers,
) -> DrillResult:
    cluster = ctx.cluster()
    # Foreground jobs through the failover Client run from just before the fault to recovery.
    with ForegroundLoad(cluster.zookeeper, cluster.cluster, scenario.name) as foreground:
        ctx.event(f"workers running background jobs: {len(workers.executed())} done so far")
        fault_at = time.monotonic()
        scenario.fault(ctx)
        uniques = {job.unique for job in workload[:acknowledged]} | ctx.extra_acknowledged
        ctx.wait(
            "recovery (every acknowledged job run, or queued on a live server)",
            lambda s: (
                len(workers.executed() & uniques)
                + sum(n["queued_jobs"] or 0 for n in s["nodes"] if n["state"] == "serving")
                >= len(uniques)
            ),
            RECOVERY_TIMEOUT,
        )
        recovery = time.monotonic() - fault_at
        ctx.event(f"recovered: every job run or queued again after {recovery:.2f}s")
    fg = foreground.ledger()
    ctx.event(f"foreground jobs through the failover Client: {fg.attempted} submitted, "
              f"{fg.acknowledged} answered right, {fg.failed} failed")  # fmt: skip
    for failure in foreground.failures[:3]:
        ctx.event(f"foreground failure: {failure}")
    workers.wait_done(uniques)
    ledger = Ledger.count(jobs + len(ctx.extra_jobs), uniques, workers.drained,
                          workers.in_flight, len(ctx.extra_refused))  # fmt: skip
    ctx.event(f"workers ran {ledger.executed} jobs; {ledger.in_flight_at_faults} were in flight "
              f"on a connection that broke, {ledger.reruns} of them ran again")  # fmt: skip
    return DrillResult(scenario.name, jobs, ledger, scenario.duplicate_bound, round(recovery, 3),
                       ctx.timeline, ctx.violations, fg)  # fmt: skip
