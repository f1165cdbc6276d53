"""Every failover drill on a real 3-node cluster, 5,000 jobs each, counted one by one.

Every scenario runs once; `partition-node`, `host-down`, `agent-hang`, `session-blip` and
`fencing-failed` always put each node on a host of its own (network, UTS and PID namespace), and
`kill-node` runs a second time that way (`--hosts netns`). Where namespaces cannot be
made, those drills fail with the reason: they never skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster import coord
from cluster.drill.scenarios import (
    FOREGROUND_DUPLICATE_BOUND,
    FOREGROUND_RERUN_BOUND,
    SCENARIOS,
    DrillContext,
    DrillResult,
    Scenario,
    run,
)
from cluster.drill.workload import FUNCTIONS, Ledger, drain, numbered_jobs, submit
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry
from cluster.local import netns
from cluster.local.cluster import PORT_BLOCK, LocalCluster, Placement, down, up
from cluster.local.status import collect
from cluster.process import free_port_block, wait_until
from tests.clusterctl import gearctl, local_cluster, up_again

pytestmark = pytest.mark.integration

DRILL_JOBS = 5000
NETNS_SCENARIOS = ("kill-node",)  # partition-node runs on three namespace hosts anyway


def check(result: DrillResult, scenario: str) -> None:
    print(result.ledger, result.foreground, sep="\n")
    ledger, fg = result.ledger, result.foreground
    assert ledger.acknowledged >= DRILL_JOBS  # store-lost adds the jobs submitted meanwhile
    assert ledger.lost == 0
    assert ledger.unexpected == 0
    assert ledger.duplicated <= SCENARIOS[scenario].duplicate_bound
    assert ledger.reruns <= ledger.in_flight_at_faults  # one per connection that broke
    assert fg is not None and fg.attempted > 0
    assert (fg.lost, fg.unexpected, fg.failed) == (0, 0, 0)
    assert fg.acknowledged == fg.attempted
    assert fg.duplicated <= FOREGROUND_DUPLICATE_BOUND
    assert fg.reruns <= min(fg.failovers, FOREGROUND_RERUN_BOUND)  # one per failover at most
    assert not result.violations
    assert result.passed


@pytest.mark.parametrize(
    "scenario", sorted(set(SCENARIOS) - {"store-lost", "store-full", "twin-silent"})
)
def test_drill_loses_and_doubles_nothing(scenario: str) -> None:
    result = run(scenario, DRILL_JOBS, print)
    check(result, scenario)
    if SCENARIOS[scenario].isolated_nodes:
        check_three_hosts(result)


def test_kill_drainer_without_spread_take_over_loses_nothing() -> None:
    """The single drainer of a store (`--no-spread`; the other drills spread) dies mid-drain
    if it still runs, else just after: the last survivor drains both stores; nothing lost,
    duplicates within BATCH."""
    result = run("kill-drainer", DRILL_JOBS, print, spread=False)
    check(result, "kill-drainer")


def test_kill_part_drainer_leaves_its_part_to_another_survivor() -> None:
    result = run(
        "kill-part-drainer", DRILL_JOBS, print, spread=False
    )  # Scenario.spread: on whatever the flag
    check(result, "kill-part-drainer")
    events = [event for _, event in result.timeline]
    assert any(re.match(r"node\d claimed node1's store and spread it over", e) for e in events)
    assert any(re.match(r"take-over by node\d: done, \d+ jobs; part 0 by ", e) for e in events)


@pytest.mark.parametrize("scenario", NETNS_SCENARIOS)
def test_drill_on_three_network_namespace_hosts(scenario: str) -> None:
    result = run(scenario, DRILL_JOBS, print, hosts="netns")
    check(result, scenario)
    check_three_hosts(result)


def check_three_hosts(result: DrillResult) -> None:
    assert result.hosts == "netns"
    assert "node3 in namespace gcd-n3 on 10.231.0.13" in result.timeline[1][1]
    hosts = result.timeline[2][1]  # each host: its own hostname and PID namespace
    assert hosts.startswith("hosts (this machine: ")
    namespaces = re.findall(r"PID namespace (\d+)", hosts)
    assert len(set(namespaces)) == 4  # this machine's and three others
    for n in (1, 2, 3):
        assert f"node{n}: hostname gcd-n{n}, agent pid" in hosts
    assert netns.leftovers() == ([], [])  # namespaces, veths and bridge torn down


def test_store_lost_is_reported_and_never_restarts_gearmand() -> None:
    result = run("store-lost", DRILL_JOBS, print)
    check(result, "store-lost")
    events = [event for _, event in result.timeline]
    assert any(e.startswith("node1 reported store-lost") for e in events)
    assert any(e.startswith("a submit straight to node1 is refused") for e in events)
    assert any(e.endswith("never restarted") for e in events)
    # the jobs queued on node1 before the loss, and those the Client placed meanwhile
    assert result.ledger.acknowledged == DRILL_JOBS + DRILL_JOBS // 10


def test_store_full_counts_refused_submits_as_refused_and_runs_every_job_once() -> None:
    result = run("store-full", DRILL_JOBS, print)
    check(result, "store-full")
    events = [event for _, event in result.timeline]
    assert result.ledger.refused > 0  # refused, never acknowledged: `unexpected` if one ran
    assert result.ledger.attempted == result.ledger.acknowledged + result.ledger.refused
    assert any("not job keys gearmand wrote" in e for e in events)  # the fillers: reported


def test_twin_silent_serves_from_the_other_twin_and_restores_the_pending_one_once() -> None:
    result = run("twin-silent", DRILL_JOBS, print)
    check(result, "twin-silent")
    events = [event for _, event in result.timeline]
    assert any(e.startswith("node1 serves on ") and e.endswith(" pending") for e in events)
    assert any(e.startswith("node1's pending twin restored") for e in events)
    assert result.ledger.duplicated == 0


def node1(directory: Path) -> dict[str, Any]:
    cluster = LocalCluster.load(directory)
    assert cluster is not None
    return collect(cluster)["nodes"][0]


def wait_node1(directory: Path, **expected: object) -> dict[str, Any]:
    wait_until(lambda: expected.items() <= node1(directory).items(), timeout=60,
               what=f"node1 {expected}")  # fmt: skip
    return node1(directory)


def test_store_lost_with_gearmand_dead_starts_no_gearmand_until_it_is_back(tmp_path: Path) -> None:
    """No crash loop: without its stores (both twins) the agent starts no gearmand, says
    `store-lost`, and serves again once the stores are started again (as systemd would)."""
    with local_cluster(tmp_path / "c", nodes=1) as directory:
        plan = json.loads((directory / "cluster.json").read_text())
        for key in ("twin:node1", "store:node1"):
            os.kill(plan["processes"][key]["pid"], signal.SIGKILL)
        status = wait_node1(directory, state="store-lost")
        os.kill(status["gearmand_pid"], signal.SIGKILL)
        wait_node1(directory, state="store-lost", gearmand_pid=None, restarts=1)
        for _ in range(6):  # the agent retries every second and must start nothing meanwhile
            status = node1(directory)
            assert (status["state"], status["gearmand_pid"]) == ("store-lost", None)
            time.sleep(0.5)
        up_again(directory)
        assert wait_node1(directory, state="serving")["restarts"] == 1


def test_one_twin_lost_with_gearmand_dead_serves_on_the_other_and_the_twin_back_is_lost(
    tmp_path: Path,
) -> None:
    """One twin killed (the one gearmand writes), then gearmand: the node serves on the other
    twin with the dead one pending; started again (empty, as systemd would) it is logged LOST,
    and no longer pending."""
    with local_cluster(tmp_path / "c", nodes=1) as directory:
        cluster = LocalCluster.load(directory)
        assert cluster is not None
        store = cluster.nodes[0].stores["store"]
        assert node1(directory)["store"] == store  # both empty at the first start: the first
        os.kill(cluster.processes["store:node1"].pid, signal.SIGKILL)
        status = wait_node1(directory, state="store-lost")
        os.kill(status["gearmand_pid"], signal.SIGKILL)
        wait_node1(directory, state="serving", restarts=1, pending=store)
        up_again(directory)
        wait_node1(directory, state="serving", restarts=1, pending=None)
        log = (cluster.node_dir("node1") / "log" / "agent.log").read_text()
        assert f"twin store {store} is LOST" in log


def test_netns_drill_tears_everything_down_when_the_fault_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []

    def broken(ctx: DrillContext) -> None:
        started.extend(ref.pid for ref in ctx.cluster().processes.values())
        started.extend(n["gearmand_pid"] for n in ctx.status()["nodes"])
        raise GearctlError("this fault fails on purpose")

    monkeypatch.setitem(SCENARIOS, "broken", Scenario("broken", "a fault that fails", broken))
    with pytest.raises(GearctlError, match="on purpose"):
        run("broken", 100, print, hosts="netns")
    assert len(started) == 3 + 3 + 3 + 1 + 3  # agents, stores, twin stores, ZooKeeper, gearmands
    assert [pid for pid in started if psutil.pid_exists(pid)] == []
    assert netns.leftovers() == ([], [])


def test_netns_drill_without_namespaces_says_so_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.shutil, "which", lambda _name: None)
    monkeypatch.setattr(netns.os, "access", lambda _path, _mode: False)
    with pytest.raises(netns.NetnsError, match="`ip` is not installed"):
        run("kill-node", 10, print, hosts="netns")


def test_drill_rejects_unknown_hosts() -> None:
    with pytest.raises(GearctlError, match="--hosts must be one of local, netns"):
        run("kill-node", 10, print, hosts="vm")


def test_drill_cli_json_is_a_ledger_and_exit_status_follows_it() -> None:
    result = gearctl("drill", "kill-gearmand", "--jobs", "500", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["scenario"] == "kill-gearmand" and report["passed"] is True
    assert (report["attempted"], report["lost"], report["duplicated"]) == (500, 0, 0)
    assert report["executed"] == 500 + report["reruns"]  # a job in flight at the kill re-runs
    assert report["reruns"] <= report["in_flight_at_faults"] <= 3  # one per worker connection
    assert report["timeline"][0]["event"] == "cluster of 3 nodes serving"
    assert report["hosts"] == "local"
    foreground = report["foreground"]
    assert foreground["attempted"] == foreground["acknowledged"] > 0
    assert (foreground["lost"], foreground["failed"], foreground["unexpected"]) == (0, 0, 0)
    assert (foreground["duplicated"], foreground["duplicate_bound"]) == (0, 0)
    assert foreground["reruns"] <= min(foreground["failovers"], foreground["rerun_bound"])


def test_drill_cli_rejects_unknown_scenario() -> None:
    result = gearctl("drill", "no-such-drill")
    assert result.returncode == 1
    assert "unknown scenario 'no-such-drill'" in result.stderr


def test_store_drain_takes_over_a_dead_hosts_store(tmp_path: Path) -> None:
    """`gearctl store drain` on the store of a host that is gone (its address times out)."""
    with netns.HostNetwork(2) as network:
        placement = Placement(services=network.bridge_address,
                              node_hosts=tuple(h.address for h in network.members),
                              node_netns=tuple(h.name for h in network.members))  # fmt: skip
        directory = tmp_path / "c"
        base = free_port_block(PORT_BLOCK, placement.services)
        try:
            up(directory, 2, base, print, placement=placement)
            assert gearctl("takeover", "pause", "--dir", str(directory)).returncode == 0
            cluster = LocalCluster.load(directory)
            assert cluster is not None
            jobs = numbered_jobs(500, "hostdown")
            assert submit(Endpoint.parse(cluster.nodes[0].gearman), jobs) == 500
            # node1's agent publishes the (dashed) function names: the drain needs them
            with coord.session(cluster.zookeeper, cluster.cluster) as session:
                registry = FunctionRegistry(session)
                wait_until(lambda: set(FUNCTIONS) <= registry.known(), timeout=30,
                           what="function names in ZooKeeper")  # fmt: skip
            network.power_off("gcd-n1")
            wait_until(lambda: node1(directory)["zk_session"] is None, timeout=60,
                       what="node1's session expiry")  # fmt: skip
            result = gearctl("store", "drain", "node1", "--into", "node2", "--dir",
                             str(directory), "--json")  # fmt: skip
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert "cannot be reached" in report["fenced"], report
            assert report["moved"] == 500
            drained = drain([Endpoint.parse(cluster.nodes[1].gearman)], FUNCTIONS, 500)
            ledger = Ledger.count(500, {j.unique for j in jobs}, drained)
            assert (ledger.lost, ledger.duplicated, ledger.unexpected) == (0, 0, 0)
        finally:
            down(directory, print)
