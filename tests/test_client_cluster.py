"""Client and Worker failover against a real 3-node local cluster (`gearctl cluster up`).

One cluster serves the whole module; the node-loss test runs last since the lost node stays down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster.gearman.admin import AdminClient
from cluster.gearman.client import Client
from tests.clusterctl import (
    gearctl,
    gearman,
    kill_node,
    local_cluster,
    status_json,
    wait_until,
)

pytestmark = pytest.mark.integration

GEARMAN = shutil.which("gearman")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if GEARMAN is None:
        pytest.skip("gearman-tools is not installed")
    directory = tmp_path_factory.mktemp("client-cluster")
    with local_cluster(directory):
        status = status_json(directory)
        status["dir"] = directory
        yield status


def zookeeper(status: dict[str, Any]) -> str:
    return status["zookeeper"]["address"]


def all_serving(directory: Path) -> dict[str, Any]:
    return wait_until(directory, lambda s: all(n["state"] == "serving" for n in s["nodes"]), 30)


def start_cli_worker(node: dict[str, Any], function: str, *command: str) -> subprocess.Popen:
    host, port = node["gearman"].split(":")
    return subprocess.Popen(
        [GEARMAN, "-h", host, "-p", port, "-w", "-f", function, "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # our own child, by its PID
        proc.wait(5)


WORKER_SCRIPT = """
import signal, sys
from cluster.gearman.client import Worker
zookeeper, cluster, log_path = sys.argv[1:4]
worker = Worker(zookeeper=zookeeper, cluster=cluster, min_backoff=0.05, max_backoff=0.5)
log = open(log_path, "a", buffering=1)
def upper(job):
    log.write(f"{job.function} {job.unique} {job.payload.decode()}\\n")
    return job.payload.upper()
worker.register("upper", upper)
worker.register("count", upper)
worker.register("midway", upper)
signal.signal(signal.SIGTERM, lambda *a: worker.stop())
print("ready", flush=True)
worker.work()
worker.close()
"""


def start_python_worker(status: dict[str, Any], log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, zookeeper(status), status["cluster"], str(log_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_python_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()  # SIGTERM -> worker.stop(): a clean exit
    for proc in procs:
        assert proc.wait(10) == 0


def log_lines(path: Path) -> list[list[str]]:
    """The whole lines the workers wrote (the last one may be half-written while we read)."""
    if not path.exists():
        return []
    return [line.split(" ", 2) for line in path.read_text().split("\n")[:-1]]


def test_foreground_jobs_survive_a_gearmand_kill(cluster: dict[str, Any]) -> None:
    """1,000 foreground jobs to `gearman -w ... rev` workers while one gearmand is killed."""
    directory = cluster["dir"]
    status = all_serving(directory)
    workers = [start_cli_worker(n, "rev", "rev") for n in status["nodes"] for _ in range(2)]
    victim = status["nodes"][1]
    results: dict[int, bytes] = {}
    try:
        time.sleep(0.3)  # the CLI workers register
        with Client(zookeeper=zookeeper(status), cluster=status["cluster"]) as client:
            for i in range(1000):
                if i == 300:
                    threading.Timer(0.05, psutil.Process(victim["gearmand_pid"]).kill).start()
                results[i] = client.submit("rev", f"job-{i}-abc", timeout=30)
        assert all(results[i] == f"job-{i}-abc"[::-1].encode() for i in range(1000))
        restarted = all_serving(directory)
        victim_now = next(n for n in restarted["nodes"] if n["name"] == victim["name"])
        assert victim_now["gearmand_pid"] != victim["gearmand_pid"]
    finally:
        stop(workers)


def test_background_jobs_through_a_killed_gearmand_run_once(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """Background jobs queued (no worker yet) on all nodes, one gearmand killed and restored by
    its agent; then Workers drain them: every job runs exactly once, with its own unique."""
    directory = cluster["dir"]
    status = all_serving(directory)
    victim = status["nodes"][0]
    jobs = 3000
    with Client(zookeeper=zookeeper(status), cluster=status["cluster"]) as client:
        handles: list[bytes] = []
        for part in range(3):  # one pipelined batch per server (round robin)
            numbers = range(part * jobs // 6, (part + 1) * jobs // 6)
            handles += client.submit_background_many(("count", f"{i}") for i in numbers)
        assert queued(victim, "count") > 0, "the killed gearmand holds acknowledged jobs"
        psutil.Process(victim["gearmand_pid"]).kill()
        for i in range(jobs // 2, jobs):  # one by one while the node restarts and restores
            client.submit_background("count", f"{i}")
    assert len(handles) == jobs // 2 and all(handles)
    all_serving(directory)
    ran = drain(status, tmp_path / "ran.log", "count", jobs)
    payloads = Counter(int(payload) for _, _, payload in ran)
    assert set(payloads) == set(range(jobs)), f"missing {set(range(jobs)) - set(payloads)}"
    assert max(payloads.values()) == 1
    assert len({unique for _, unique, _ in ran}) == jobs


def test_batch_through_a_gearmand_killed_midway_goes_on_elsewhere(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """A pipelined batch whose gearmand is SIGKILLed midway: the Client sends the jobs not
    acknowledged yet to another server. Every job runs; only jobs that were in flight at the
    kill (at most one window) may run twice (at least once delivery), acknowledged ones never
    are sent again."""
    directory = cluster["dir"]
    status = all_serving(directory)
    jobs, window = 10_000, 200
    killed: list[dict[str, Any]] = []

    def kill_the_busy_one() -> None:  # the node the batch goes to, once it acknowledged 2,000
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            for node in status["nodes"]:
                if queued(node, "midway") >= 2000:
                    psutil.Process(node["gearmand_pid"]).kill()
                    killed.append(node)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_busy_one)
    killer.start()
    with Client(zookeeper=zookeeper(status), cluster=status["cluster"]) as client:
        handles = client.submit_background_many(
            [("midway", f"{i}") for i in range(jobs)], window=window
        )
    killer.join(35)
    assert killed, "the batch was never seen on one gearmand"
    assert len(handles) == jobs and all(handles)
    all_serving(directory)
    ran = drain(status, tmp_path / "ran.log", "midway", jobs)
    payloads = Counter(int(payload) for _, _, payload in ran)
    assert set(payloads) == set(range(jobs)), f"missing {set(range(jobs)) - set(payloads)}"
    assert sum(n - 1 for n in payloads.values()) <= window


def queued(node: dict[str, Any], function: str) -> int:
    return sum(f.queued for f in AdminClient(gearman(node)).status() if f.name == function)


def drain(status: dict[str, Any], log_path: Path, function: str, jobs: int) -> list[list[str]]:
    """Run two Python Workers until `jobs` distinct payloads of `function` ran (or 30 s
    passed), then a little longer so that duplicates show up; the (function, unique, payload)
    lines run."""
    workers = [start_python_worker(status, log_path) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len({p for f, _, p in log_lines(log_path) if f == function}) >= jobs:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop_python_workers(workers)
    return [line for line in log_lines(log_path) if line[0] == function]


def test_cli_clients_reach_python_workers_across_a_node_loss(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """`gearman` CLI clients submit to Worker processes (ZooKeeper discovery) on every node;
    one node is lost (agent + gearmand killed): its queued background jobs are taken over by a
    survivor and run once, and foreground CLI jobs on the survivors keep working."""
    directory = cluster["dir"]
    status = all_serving(directory)
    log_path = tmp_path / "ran.log"
    workers = [start_python_worker(status, log_path) for _ in range(2)]
    lost = status["nodes"][2]
    survivors = [n for n in status["nodes"] if n is not lost]
    try:
        for node in status["nodes"]:
            assert cli(node, "-f", "upper", f"fg-{node['name']}") == f"FG-{node['name'].upper()}"
        stop_python_workers(workers)  # so that background jobs wait in the lost node's store
        log_path.unlink(missing_ok=True)
        for i in range(20):
            cli(lost, "-b", "-f", "count", f"bg-{i}")
        kill_node(lost)
        workers = [start_python_worker(status, log_path) for _ in range(2)]
        for i, node in enumerate(survivors * 3):
            assert cli(node, "-f", "upper", f"after-{i}") == f"AFTER-{i}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            ran = Counter(p for f, _, p in log_lines(log_path) if f == "count")
            if len(ran) == 20:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        ran = Counter(p for f, _, p in log_lines(log_path) if f == "count")
        assert ran == Counter({f"bg-{i}": 1 for i in range(20)})
        servers = gearctl("cluster", "status", "--dir", str(directory), "--json")
        assert json.loads(servers.stdout)["takeovers"], "the lost node's store was taken over"
    finally:
        stop_python_workers([w for w in workers if w.poll() is None])


def cli(node: dict[str, Any], *args: str) -> str:
    host, port = node["gearman"].split(":")
    result = subprocess.run(
        [GEARMAN, "-h", host, "-p", port, *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
