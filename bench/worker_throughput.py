"""Worker jobs/s against one gearmand: `cluster.gearman.client.Worker(concurrency=N)` next to
`gear` (the Zuul project's library: N `gear.Worker`s on N threads, its way to run N jobs at a
time) on the same jobs in the same run, for N = 1, 4, 16, on no-op jobs and on 20 ms jobs (a
sleep: I/O-bound work). Also the Worker before issue 17 (one job at a time, handlers on the
loop thread; read from git) on no-op jobs, for what the pool threads cost.

Each measurement: queue the jobs (no worker connected), start the worker in its own process,
time from "go" until gearmand reports the function's queue empty (polled every 5 ms).

    .venv/bin/python bench/worker_throughput.py [--noop-jobs N] [--sleep-seconds S] [--quick]

Needs the bench extra (`pip install -e ".[bench]"`: gear). Starts and stops its own gearmand, by
PID. Writes bench/results/worker_throughput.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client_throughput import start_gearmand
from bench.common import median, save, table
from cluster.endpoint import Endpoint
from cluster.gearman.admin import AdminClient
from cluster.gearman.client import Client, Worker
from cluster.process import stop_pid

CONCURRENCY = (1, 4, 16)
SLEEP = 0.020
BASELINE_COMMIT = "66a37d0"
"""The last commit with the one-job-at-a-time Worker."""


def handler_for(kind: str):  # type: ignore[no-untyped-def]
    if kind == "noop":
        return lambda payload: b""

    def sleeper(payload: bytes) -> bytes:
        time.sleep(SLEEP)
        return b""

    return sleeper


def run_ours(endpoint: str, function: str, kind: str, concurrency: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    work = handler_for(kind)
    worker = Worker(servers=[endpoint], concurrency=concurrency)
    worker.register(function, lambda job: work(job.payload))
    ready.set()
    go.wait()
    worker.work()


def run_baseline(endpoint: str, function: str, kind: str, concurrency: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    module = load_baseline()
    work = handler_for(kind)
    worker = module.Worker(servers=[endpoint])
    worker.register(function, lambda job: work(job.payload))
    ready.set()
    go.wait()
    worker.work()


def run_gear(endpoint: str, function: str, kind: str, concurrency: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    serve_gear(endpoint, function, kind, concurrency, ready, go, nodelay=False)


def run_gear_nodelay(endpoint: str, function: str, kind: str, concurrency: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    serve_gear(endpoint, function, kind, concurrency, ready, go, nodelay=True)


def serve_gear(endpoint, function, kind, concurrency, ready, go, *, nodelay: bool) -> None:  # type: ignore[no-untyped-def]
    """gear as shipped leaves Nagle on (no TCP_NODELAY): with Linux's delayed ACKs a job can
    wait ~40 ms for its answer to leave. `nodelay` sets TCP_NODELAY on its sockets, to compare
    the rest."""
    import socket

    import gear

    work = handler_for(kind)
    host, port = endpoint.rsplit(":", 1)
    workers = []
    for n in range(concurrency):
        worker = gear.Worker(f"bench-{n}")
        worker.addServer(host, int(port))
        worker.waitForServer()
        if nodelay:
            for conn in worker.active_connections:
                conn.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        workers.append(worker)
    ready.set()
    go.wait()

    def serve(worker: Any) -> None:
        worker.registerFunction(function)
        while True:
            job = worker.getJob()
            job.sendWorkComplete(work(job.binary_arguments))

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


RUNNERS = {
    "ours": run_ours,
    "gear": run_gear,
    "gear-nodelay": run_gear_nodelay,
    "ours-before": run_baseline,
}


def load_baseline() -> Any:
    """The Worker module as it was at BASELINE_COMMIT."""
    source = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:cluster/gearman/worker.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "worker_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("worker_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def queued(endpoint: Endpoint, function: str) -> int:
    return sum(f.queued for f in AdminClient(endpoint).status() if f.name == function)


def measure(endpoint: Endpoint, impl: str, kind: str, concurrency: int, jobs: int) -> float:
    """Jobs/s of one worker implementation draining `jobs` queued jobs."""
    function = f"bench-{impl}-{kind}-{concurrency}-{time.monotonic_ns()}"
    with Client(servers=[endpoint]) as client:
        client.submit_background_many((function, b"x" * 64) for _ in range(jobs))
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    args = (str(endpoint), function, kind, concurrency, ready, go)
    proc = ctx.Process(target=RUNNERS[impl], args=args, daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"{impl} worker did not start")
        start = time.perf_counter()
        go.set()
        deadline = time.monotonic() + 300
        while queued(endpoint, function) and time.monotonic() < deadline:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        if queued(endpoint, function):
            raise RuntimeError(f"{impl} worker did not drain {jobs} jobs")
    finally:
        proc.kill()  # our own child, by its PID
        proc.join(10)
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noop-jobs", type=int, default=10000)
    parser.add_argument(
        "--sleep-seconds", type=float, default=1.5, help="ideal duration of a 20 ms-job run"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.noop_jobs, args.sleep_seconds, args.rounds = 500, 0.2, 1
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_gearmand(Path(tmp))
        try:
            rates: dict[str, dict[str, list[float]]] = {}
            for round_ in range(args.rounds):
                for kind in ("noop", "20ms"):
                    for concurrency in CONCURRENCY:
                        impls = ["ours", "gear", "gear-nodelay"]
                        if kind == "noop" and concurrency == 1:
                            impls.append("ours-before")
                        if round_ % 2:
                            impls.reverse()
                        jobs = (
                            args.noop_jobs
                            if kind == "noop"
                            else max(10, round(args.sleep_seconds * concurrency / SLEEP))
                        )
                        for impl in impls:
                            # gear with Nagle on runs ~25 no-op jobs/s a thread: fewer jobs
                            n = min(jobs, 150 * concurrency) if impl == "gear" else jobs
                            rate = measure(endpoint, impl, kind, concurrency, n)
                            key = f"{kind} c={concurrency}"
                            rates.setdefault(key, {}).setdefault(impl, []).append(rate)
                            print(f"{key:>10} {impl:>12}: {rate:>8,.0f} jobs/s ({n} jobs)")
        finally:
            stop_pid(proc.pid)
            proc.wait()
    summary = {key: {impl: median(v) for impl, v in by.items()} for key, by in rates.items()}
    rows = [
        [key, f"{by['ours']:,.0f}", f"{by['gear']:,.0f}", f"{by['gear-nodelay']:,.0f}",
         f"{by['ours'] / by['gear-nodelay']:.2f}",
         f"{by['ours-before']:,.0f}" if "ours-before" in by else ""]
        for key, by in summary.items()
    ]  # fmt: skip
    headers = ["jobs, concurrency", "Worker", "gear", "gear+NODELAY", "Worker/gear+ND", "before"]
    print(table(headers, rows))
    save(
        "worker_throughput",
        {"rates": rates, "median": summary, "args": vars(args), "quick": args.quick},
    )


if __name__ == "__main__":
    main()
