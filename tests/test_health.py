"""The agent's /health, /ready and /status endpoints (cluster/httpapi.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.coord import MemberRecord
from cluster.endpoint import Endpoint
from cluster.local.zookeeper_server import ZooKeeperLaunch, start_zookeeper
from cluster.metrics import AgentMetrics
from cluster.process import free_port, stop_pid
from tests.conftest import HOST, RunningGearmand
from tests.healthnodes import get, health_nodes


@pytest.fixture
def served(gearmand: RunningGearmand) -> Iterator[tuple[AgentMetrics, Endpoint]]:
    """Hooks of an agent whose gearmand is the real `gearmand` fixture, served over HTTP."""
    metrics = AgentMetrics("n1", gearmand.endpoint, (gearmand.store,), timeout=0.5)
    endpoint = Endpoint(HOST, free_port())
    assert metrics.serve(endpoint)
    yield metrics, endpoint
    metrics.stop()


@pytest.mark.integration
def test_health_follows_the_agent_state(served: tuple[AgentMetrics, Endpoint]) -> None:
    metrics, endpoint = served
    code, body = get(f"http://{endpoint}/health")
    assert (code, body["state"], body["gearmand"]) == (503, "starting", "answering")
    record = MemberRecord("n1", str(metrics.gearman), "s:1", agent_pid=1, gearmand_pid=2,
                          state="restoring")  # fmt: skip
    metrics.record(record)
    assert get(f"http://{endpoint}/health")[0] == 503
    assert get(f"http://{endpoint}/ready")[0] == 200  # a restoring gearmand takes jobs
    metrics.record(record.with_changes(state="serving"))
    code, body = get(f"http://{endpoint}/health")
    assert (code, body["serving"], body["gearmand_pid"]) == (200, True, 2)
    metrics.record(record.with_changes(state="store-lost"))
    assert get(f"http://{endpoint}/health")[0] == 503
    assert get(f"http://{endpoint}/ready")[0] == 503
    metrics.record(record.with_changes(state="serving"))
    metrics.fenced()
    code, body = get(f"http://{endpoint}/health")
    assert (code, body["state"], body["gearmand_pid"]) == (503, "fenced", None)
    code, body = get(f"http://{endpoint}/status")
    assert (code, body["node"], body["state"]) == (200, "n1", "fenced")


def test_health_without_gearmand_is_503_and_metrics_still_served() -> None:
    metrics = AgentMetrics("n1", Endpoint(HOST, free_port()), (Endpoint(HOST, free_port()),), 0.2)
    metrics.record(MemberRecord("n1", "g:1", "s:1", agent_pid=1, gearmand_pid=2, state="serving"))
    endpoint = Endpoint(HOST, free_port())
    assert metrics.serve(endpoint)
    try:
        code, body = get(f"http://{endpoint}/health")
        assert (code, body["state"], body["gearmand"]) == (503, "serving", "not answering")
        assert get(f"http://{endpoint}/status")[0] == 200
    finally:
        metrics.stop()


@pytest.mark.integration
def test_health_of_a_real_agent_serving_hung_and_fenced(tmp_path: Path) -> None:
    """200 serving; 503 while its gearmand is SIGSTOPped (the agent still says serving: its
    watchdog waits 100 checks here) and 200 once it runs again; 503 `fenced` while ZooKeeper
    hangs (a ZooKeeper of this test's own), and 200 once the agent is back."""
    directory = tmp_path / "zk"
    launch = ZooKeeperLaunch(Endpoint(HOST, free_port()), directory / "data",
                             directory / "zk.log", directory / "zk.pid")  # fmt: skip
    zookeeper = start_zookeeper(launch)
    try:
        with health_nodes(tmp_path, launch.endpoint, 1) as (node,):
            code, body = node.health()
            assert (code, body["state"], body["serving"]) == (200, "serving", True)
            assert node.health("/ready")[0] == 200
            gearmand = body["gearmand_pid"]
            os.kill(gearmand, signal.SIGSTOP)
            try:
                body = node.wait_health(503)
                assert (body["state"], body["gearmand"]) == ("serving", "not answering")
            finally:
                os.kill(gearmand, signal.SIGCONT)
            node.wait_health(200)
            os.kill(zookeeper.pid, signal.SIGSTOP)
            try:
                body = node.wait_health(503)
                assert body["state"] == "fenced"
            finally:
                os.kill(zookeeper.pid, signal.SIGCONT)
            assert node.wait_health(200)["gearmand_pid"] != gearmand
    finally:
        stop_pid(zookeeper.pid)
        zookeeper.wait()
