"""Interop with the PHP extension (php-gearman, on libgearman) against a real 3-node local
cluster: PHP clients to our Worker and our Client to PHP workers while a node's gearmand is
killed (every acknowledged unique runs once; a job in flight at the kill may run once more),
and a foreground round trip each way with WORK_DATA and WORK_STATUS. The PHP scripts are in
tests/php/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster.gearman.client import Client, JobUpdate, Worker, WorkerJob
from tests.clusterctl import local_cluster, status_json, wait_until

pytestmark = pytest.mark.integration

PHP = shutil.which("php")
SCRIPTS = Path(__file__).parent / "php"
JOBS = 300
PRIORITIES = ("high", "normal", "low")
CONCURRENCY = 4  # jobs our Worker runs at once: as many can be in flight at a kill


def php_missing() -> str | None:
    """Why the PHP tests cannot run here, or None."""
    if PHP is None:
        return "php-cli is not installed (scripts/bootstrap.sh installs php-cli and php-gearman)"
    probe = subprocess.run(
        [PHP, "-r", "exit(class_exists('GearmanClient') ? 0 : 1);"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return "the PHP gearman extension is not installed (Debian package php-gearman)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = php_missing()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("php-cluster")
    with local_cluster(directory):
        status = status_json(directory)
        status["dir"] = directory
        yield status


def all_serving(status: dict[str, Any]) -> dict[str, Any]:
    return wait_until(status["dir"], lambda s: all(n["state"] == "serving" for n in s["nodes"]), 60)


def addresses(status: dict[str, Any]) -> str:
    return ",".join(node["gearman"] for node in status["nodes"])


def our_worker(status: dict[str, Any]) -> Worker:
    return Worker(
        zookeeper=status["zookeeper"]["address"],
        cluster=status["cluster"],
        concurrency=CONCURRENCY,
        min_backoff=0.05,
        max_backoff=0.5,
    )


def start_php_worker(servers: str, ledger: Path, *functions: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PHP, str(SCRIPTS / "worker.php"), servers, str(ledger), *functions],  # type: ignore[list-item]
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_procs(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # our own child, by its PID
        proc.wait(10)


def ledger_uniques(path: Path, function: str) -> Counter[str]:
    if not path.exists():
        return Counter()
    lines = (line.split(" ", 2) for line in path.read_text().splitlines())
    return Counter(unique for name, unique, _ in lines if name == function)


def wait_for_runs(
    ran: Callable[[], Counter[str]], acknowledged: set[str], timeout: float = 90
) -> Counter[str]:
    """Wait until every acknowledged unique ran (a bound against hangs), then a little
    longer so that second runs would show; the runs per unique."""
    deadline = time.monotonic() + timeout
    while not acknowledged <= set(ran()) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    return ran()


def node_in_use(status: dict[str, Any], pid: int) -> dict[str, Any]:
    """The node whose gearmand the process `pid` is connected to (the first one)."""
    ports = {c.raddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr}
    return next(n for n in status["nodes"] if int(n["gearman"].rsplit(":", 1)[1]) in ports)


def assert_ran_once(acknowledged: set[str], counted: Counter[str], in_flight: int) -> None:
    """Every acknowledged unique ran, and none ran twice but the jobs in flight at the kill.

    A job a worker was running when its gearmand died runs again: its WORK_COMPLETE never reached
    gearmand, so its key was never deleted and the restart restores it (docs/drills.md). The
    workers hold at most `in_flight` jobs at once (a PHP worker one, our Worker its
    concurrency), so at most that many re-runs, and none runs a third time."""
    missing = acknowledged - set(counted)
    assert not missing, f"acknowledged but never run: {sorted(missing)}"
    again = {u: n for u, n in counted.items() if n > 1}
    assert all(n == 2 for n in again.values()), f"ran more than twice: {again}"
    assert len(again) <= in_flight, f"more re-runs than jobs in flight at the kill: {again}"


def kill_gearmand(node: dict[str, Any]) -> None:
    psutil.Process(node["gearmand_pid"]).kill()


def restarted(status: dict[str, Any], victim: dict[str, Any]) -> bool:
    now = all_serving(status)
    node = next(n for n in now["nodes"] if n["name"] == victim["name"])
    return node["gearmand_pid"] != victim["gearmand_pid"]


def test_php_client_to_our_worker_through_a_gearmand_kill(cluster: dict[str, Any]) -> None:
    """php client.php submits 300 background jobs (dashed function, high/normal/low, explicit
    uniques) with addServers of the live servers; a gearmand is killed after 100 of them."""
    status = all_serving(cluster)
    function = "php-to-python-job"
    ran: Counter[str] = Counter()
    lock = threading.Lock()

    def record(job: WorkerJob) -> bytes:
        with lock:
            ran[job.unique] += 1
        return b""

    def runs() -> Counter[str]:
        with lock:
            return Counter(ran)

    worker = our_worker(status)
    worker.register(function, record)
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    thread.start()
    victim: dict[str, Any] = {}
    try:
        client = subprocess.Popen(
            [PHP, str(SCRIPTS / "client.php"), "background", addresses(status), function,
             str(JOBS), "10"],  # type: ignore[list-item]
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert client.stdout is not None
        lines = []
        for line in client.stdout:
            lines.append(line.split())
            if len(lines) == 100:
                victim = node_in_use(status, client.pid)
                kill_gearmand(victim)
        assert client.wait(60) == 0
        acknowledged = {words[1] for words in lines if words[0] == "ok"}
        assert len(lines) == JOBS and len(acknowledged) >= JOBS // 2, lines[95:110]
        counted = wait_for_runs(runs, acknowledged)
    finally:
        worker.stop()
        thread.join(30)
        worker.close()
    assert restarted(cluster, victim)
    assert_ran_once(acknowledged, counted, in_flight=CONCURRENCY)


def test_our_client_to_php_workers_through_a_gearmand_kill(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """Our Client (ZooKeeper discovery) submits 300 background jobs to PHP workers (dashed
    function, high/normal/low, explicit uniques); a gearmand is killed after 100 of them."""
    status = all_serving(cluster)
    function = "python-to-php-job"
    ledger = tmp_path / "ledger.txt"
    workers = [start_php_worker(addresses(status), ledger, function) for _ in range(2)]
    victim = status["nodes"][0]
    acknowledged: set[str] = set()
    try:
        with Client(zookeeper=status["zookeeper"]["address"], cluster=status["cluster"]) as client:
            for i in range(JOBS):
                if i == 100:
                    kill_gearmand(victim)
                unique = f"py-{i}"
                client.submit_background(
                    function, f"payload-{i}", unique=unique, priority=PRIORITIES[i % 3]
                )
                acknowledged.add(unique)
        counted = wait_for_runs(lambda: ledger_uniques(ledger, function), acknowledged)
    finally:
        stop_procs(workers)
    assert restarted(cluster, victim)
    assert len(acknowledged) == JOBS
    assert_ran_once(acknowledged, counted, in_flight=len(workers))


def test_foreground_round_trip_each_way_with_data_and_status(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    status = all_serving(cluster)
    servers = addresses(status)

    def chatty(job: WorkerJob) -> bytes:
        job.send_data(b"part-1")
        job.send_status(1, 2)
        job.send_data(b"part-2")
        return job.payload.upper()

    worker = our_worker(status)
    worker.register("python-chatty", chatty)
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
    thread.start()
    php_worker = start_php_worker(servers, tmp_path / "ledger.txt", "php-chatty")
    try:
        php = subprocess.run(
            [PHP, str(SCRIPTS / "client.php"), "foreground", servers, "python-chatty",
             "hello"],  # type: ignore[list-item]
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert php.returncode == 0, php.stdout + php.stderr
        events = [json.loads(line) for line in php.stdout.splitlines()]
        assert events == [
            {"data": "part-1"},
            {"status": [1, 2]},
            {"data": "part-2"},
            {"complete": "HELLO"},
        ]
        updates: list[JobUpdate] = []
        with Client(zookeeper=status["zookeeper"]["address"], cluster=status["cluster"]) as client:
            result = client.submit("php-chatty", b"chatty-x", on_update=updates.append)
        assert result == b"CHATTY-X"
        assert [(u.kind, u.data, u.numerator, u.denominator) for u in updates] == [
            ("data", b"part-1", 0, 0),
            ("status", b"", 1, 2),
            ("data", b"part-2", 0, 0),
        ]
    finally:
        stop_procs([php_worker])
        worker.stop()
        thread.join(30)
        worker.close()
