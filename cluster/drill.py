"""Failover drills: a real local cluster, a workload, one fault, and a ledger of every job.

A drill starts its own 3-node cluster on free loopback ports, queues uniquely numbered
background jobs (dashed function names, all priorities, payloads of several sizes), injects one
fault, waits until every acknowledged job is queued on a live server again (time to recover),
lets a worker drain everything, and counts each unique (cluster.workload.Ledger). It passes only
with lost = 0, unexpected = 0 and duplicated within the scenario's bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster import localcluster
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.localstatus import collect
from cluster.process import free_port_block
from cluster.protocol import GearmanConnection
from cluster.restore import BATCH
from cluster.workload import FUNCTIONS, Job, Ledger, drain, numbered_jobs, submit

Progress = Callable[[str], None]
RECOVERY_TIMEOUT = 180.0


@dataclass
class DrillContext:
    """What a fault needs: the cluster, its status, and a timeline to write to."""

    directory: Path
    progress: Progress
    started: float = field(default_factory=time.monotonic)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def event(self, text: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 3), text))
        self.progress(text)

    def status(self) -> dict[str, Any]:
        cluster = localcluster.LocalCluster.load(self.directory)
        assert cluster is not None
        return collect(cluster)

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["name"] == name)

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise GearctlError(f"drill: {what} did not happen within {timeout:.0f}s")

    def kill(self, pid: int | None, sig: int = signal.SIGKILL, what: str = "") -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            self.event(f"{signal.Signals(sig).name} {what} pid {pid}")

    def kill_node(self, name: str) -> None:
        node = self.node(name)
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


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fault: Callable[[DrillContext], None]
    duplicate_bound: int = 0
    zookeeper_members: int = 1


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("kill-gearmand", "kill -9 node1's gearmand; its agent restores", kill_gearmand),
        Scenario("kill-node", "kill -9 node1's agent and gearmand; a survivor drains", kill_node),
        Scenario("sigstop-gearmand", "SIGSTOP node1's gearmand (a hang)", sigstop_gearmand),
        Scenario("kill-agent-during-restore", "kill -9 node1's agent while it restores",
                 kill_agent_during_restore),
        Scenario("kill-drainer", "lose node1, then the survivor draining it",
                 kill_drainer, duplicate_bound=BATCH),
        Scenario("restart-all-agents", "kill -9 every agent at once, start them again",
                 restart_all_agents),
        Scenario("zookeeper-member-lost", "kill -9 the ZooKeeper leader of a 3-member ensemble, "
                 "then node1's gearmand", zookeeper_member_lost, zookeeper_members=3),
        Scenario("node-returns-during-drain", "lose node1, bring it back while it is drained",
                 node_returns_during_drain),
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

    @property
    def passed(self) -> bool:
        ledger = self.ledger
        return (
            ledger.lost == 0
            and ledger.unexpected == 0
            and (ledger.duplicated <= self.duplicate_bound)
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
        }


def run(scenario_name: str, jobs: int, progress: Progress) -> DrillResult:
    """Run one drill on a fresh local cluster, which is stopped again whatever happens."""
    scenario = SCENARIOS[scenario_name]
    with tempfile.TemporaryDirectory(prefix=f"gearctl-drill-{scenario_name}-") as tmp:
        directory = Path(tmp)
        ctx = DrillContext(directory, progress)
        localcluster.up(directory, 3, free_port_block(120), lambda _text: None,
                        zookeeper_members=scenario.zookeeper_members)  # fmt: skip
        try:
            ctx.event("cluster of 3 nodes serving")
            return _run(scenario, jobs, ctx)
        finally:
            localcluster.down(directory, lambda _text: None)


def _run(scenario: Scenario, jobs: int, ctx: DrillContext) -> DrillResult:
    workload = numbered_jobs(jobs, prefix=scenario.name)
    target = Endpoint.parse(ctx.node("node1")["gearman"])
    acknowledged = submit(target, workload)
    ctx.event(f"{acknowledged} of {jobs} jobs acknowledged by node1")
    # Workers stay registered on every node through the fault, as they would in production.
    with contextlib.ExitStack() as workers:
        for node in ctx.status()["nodes"]:
            worker = workers.enter_context(GearmanConnection(Endpoint.parse(node["gearman"])))
            for function in FUNCTIONS:
                worker.can_do(function)
        return _inject_and_count(scenario, jobs, ctx, workload, acknowledged)


def _inject_and_count(
    scenario: Scenario, jobs: int, ctx: DrillContext, workload: list[Job], acknowledged: int
) -> DrillResult:
    fault_at = time.monotonic()
    scenario.fault(ctx)
    ctx.wait(
        "recovery (every acknowledged job queued on a live server)",
        lambda s: (
            sum(n["queued_jobs"] or 0 for n in s["nodes"] if n["state"] == "serving")
            >= acknowledged
        ),
        RECOVERY_TIMEOUT,
    )
    recovery = time.monotonic() - fault_at
    ctx.event(f"recovered: every job queued again after {recovery:.2f}s")
    servers = [Endpoint.parse(n["gearman"]) for n in ctx.status()["nodes"]
               if n["state"] == "serving"]  # fmt: skip
    drained = drain(servers, FUNCTIONS, acknowledged)
    ctx.event(f"workers drained {sum(drained.counts.values())} jobs")
    uniques = {job.unique for job in workload[:acknowledged]}
    ledger = Ledger.count(jobs, uniques, drained)
    return DrillResult(scenario.name, jobs, ledger, scenario.duplicate_bound, round(recovery, 3),
                       ctx.timeline)  # fmt: skip
