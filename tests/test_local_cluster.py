"""`gearctl cluster up/status/down` end to end, with the real gearman command-line tools."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster.endpoint import Endpoint
from cluster.local.cluster import PORT_BLOCK
from tests.clusterctl import gearctl, local_cluster, status_json
from tests.conftest import HOST, free_port_block

pytestmark = pytest.mark.integration


def cluster_pids(directory: Path) -> list[int]:
    """Every PID the cluster's state file names, plus the gearmands the agents started."""
    state = json.loads((directory / "cluster.json").read_text())
    pids = [ref["pid"] for ref in state["processes"].values()]
    for node in state["nodes"]:
        pidfile = directory / node["name"] / "gearmand.pid"
        if pidfile.exists():
            pids.append(int(pidfile.read_text()))
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A 3-node cluster brought up by the CLI, always brought down again."""
    with local_cluster(tmp_path / "cluster") as directory:
        yield directory


def test_up_serves_jobs_on_every_node_and_down_leaves_nothing(cluster_dir: Path) -> None:
    status = status_json(cluster_dir)
    assert [n["state"] for n in status["nodes"]] == ["serving"] * 3
    assert status["zookeeper"]["reachable"] is True
    for node in status["nodes"]:
        assert set(node) >= {
            "name",
            "gearman",
            "store",
            "agent_pid",
            "gearmand_pid",
            "state",
            "queued_jobs",
            "store_items",
            "gearmand_started",
            "zk_session",
            "zk_session_state",
            "twin",
        }
        assert node["twin"] and node["twin"] != node["store"]
        assert alive(node["agent_pid"]) and alive(node["gearmand_pid"])
        assert node["zk_session"].startswith("0x") and node["zk_session_state"] == "live"
        assert node["gearmand_started"] > 0
        host, port = node["gearman"].split(":")
        worker = subprocess.Popen(
            ["gearman", "-h", host, "-p", port, "-w", "-c", "1", "-f", "reverse", "--", "rev"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = subprocess.run(
                ["gearman", "-h", host, "-p", port, "-f", "reverse", f"hello {node['name']}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert client.stdout.strip() == f"hello {node['name']}"[::-1]
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    pids = cluster_pids(cluster_dir)
    assert len(pids) == 1 + 3 + 3 + 3 + 3  # ZooKeeper, stores, twin stores, agents, gearmands
    result = gearctl("cluster", "down", "--dir", str(cluster_dir))
    assert result.returncode == 0, result.stderr
    assert [pid for pid in pids if alive(pid)] == []


def test_status_table_and_watch_on_one_zookeeper_session(cluster_dir: Path) -> None:
    status = status_json(cluster_dir)
    table = gearctl("cluster", "status", "--dir", str(cluster_dir))
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[1]
    for column in (
        "node",
        "state",
        "gearman",
        "store",
        "queued",
        "items",
        "store owner",
        "restarts",
        "last restart",
        "zookeeper session",
    ):
        assert column in header
    for node in status["nodes"]:
        assert f"{node['zk_session']} live" in table.stdout

    zk_port = Endpoint.parse(status["zookeeper"]["address"]).port
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster",
            "cluster",
            "status",
            "--dir",
            str(cluster_dir),
            "--watch",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sessions = []  # local ports of the watch's connections to ZooKeeper, one set per table
        assert watch.stdout is not None
        while len(sessions) < 5:
            line = watch.stdout.readline()
            assert line, f"--watch ended: {watch.stderr.read() if watch.stderr else ''}"
            if line.startswith("node3 "):
                sessions.append(zookeeper_client_ports(watch.pid, zk_port))
        watch.send_signal(signal.SIGINT)
        _, stderr = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert set.intersection(*sessions), f"a new ZooKeeper connection per refresh: {sessions}"


def zookeeper_client_ports(pid: int, zk_port: int) -> set[int]:
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == zk_port and conn.status == psutil.CONN_ESTABLISHED
    }


def test_background_job_is_persisted_in_the_node_store(cluster_dir: Path) -> None:
    node = status_json(cluster_dir)["nodes"][1]
    host, port = node["gearman"].split(":")
    subprocess.run(
        ["gearman", "-h", host, "-p", port, "-b", "-f", "img-resize", "-u", "j1", "x"],
        check=True,
        timeout=30,
    )
    after = status_json(cluster_dir)["nodes"][1]
    assert after["queued_jobs"] == 1
    assert after["store_items"] == 1
    inspected = gearctl("store", "inspect", "node2", "--dir", str(cluster_dir), "--json")
    assert inspected.returncode == 0, inspected.stderr
    (row,) = json.loads(inspected.stdout)["jobs"]
    assert (row["function"], row["priority"], row["count"]) == ("img-resize", "normal", 1)
    (store,) = [s for s in status_json(cluster_dir)["stores"] if s["store"] == "node2"]
    assert (row["prefix"], row["incarnation"]) == (f"g{store['epoch']}_", "live")
    assert row["oldest_age_s"] is not None and row["oldest_age_s"] >= 0


def test_up_again_is_idempotent(cluster_dir: Path) -> None:
    before = cluster_pids(cluster_dir)
    result = gearctl("cluster", "up", "--nodes", "3", "--dir", str(cluster_dir))
    assert result.returncode == 0, result.stderr
    assert cluster_pids(cluster_dir) == before


def test_agent_restarts_gearmand_after_kill(cluster_dir: Path) -> None:
    node = status_json(cluster_dir)["nodes"][0]
    psutil.Process(node["gearmand_pid"]).kill()
    for _ in range(200):
        current = status_json(cluster_dir)["nodes"][0]
        if current["state"] == "serving" and current["gearmand_pid"] != node["gearmand_pid"]:
            break
    else:
        pytest.fail(f"gearmand was not restarted: {current}")
    assert current["restarts"] == 1


def test_up_rejects_zero_nodes(tmp_path: Path) -> None:
    result = gearctl("cluster", "up", "--nodes", "0", "--dir", str(tmp_path / "c"))
    assert result.returncode != 0
    assert "--nodes must be at least 1" in result.stderr


def test_up_rejects_unwritable_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = gearctl("cluster", "up", "--dir", str(blocker / "sub"))
    assert result.returncode != 0
    assert "not writable" in result.stderr


def test_port_in_use_is_named_and_nothing_is_left_running(tmp_path: Path) -> None:
    base = free_port_block(PORT_BLOCK)
    directory = tmp_path / "c"
    with socket.socket() as squatter:
        squatter.bind((HOST, base + 111))  # node2's store port
        squatter.listen()
        result = gearctl(
            "cluster", "up", "--nodes", "3", "--dir", str(directory), "--port-base", str(base)
        )
    assert result.returncode != 0
    assert f"{HOST}:{base + 111} is in use by" in result.stderr
    assert "stopping what this run started" in result.stderr
    listening = [
        conn.laddr.port
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and base <= conn.laddr.port < base + PORT_BLOCK
    ]
    assert listening == []


def test_servers_lists_every_serving_node_for_other_clients(cluster_dir: Path) -> None:
    nodes = status_json(cluster_dir)["nodes"]
    listed = gearctl("cluster", "servers", "--dir", str(cluster_dir))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == ",".join(node["gearman"] for node in nodes)
    both = gearctl("cluster", "servers", "--dir", str(cluster_dir), "--zookeeper", "127.0.0.1:1")
    assert both.returncode != 0 and "not both" in both.stderr
