"""Throughput of cluster.gearman.client against one gearmand (builtin queue, 200003 buckets, -t 1).

1. Pipelined background submits, each round on a fresh gearmand, run order reversed every other
   round. Goal: Client >= 0.8 of a raw-socket pipelined submitter (same window, same
   half-window sends, same jobs). Two pairs, each run back to back:
   - uniques given: the same kind of pre-made UUID4 strings for raw and `Client`;
   - uniques generated: raw makes them with `new_uniques` inside its timing, `Client` makes
     its own (jobs without a unique).
   Also `GearmanConnection.submit_background_many` alone, and the submitting process's CPU
   time per job (less noisy than jobs/s on a shared machine).
2. Worker throughput: N queued no-op jobs drained by 1 and by 4 `Worker` processes.

    .venv/bin/python bench/client_throughput.py [--jobs 50000] [--rounds 15] [--worker-jobs 20000]

Starts and stops its own gearmand, by PID. Writes bench/results/client_throughput.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save
from cluster.endpoint import Endpoint
from cluster.gearman.admin import AdminClient, is_serving
from cluster.gearman.client import Client, Worker, new_uniques
from cluster.gearman.protocol import GearmanConnection
from cluster.process import free_port, stop_pid, wait_until

HOST = "127.0.0.1"
PAYLOAD = b"x" * 64
WINDOW = 1000
HEADER = struct.Struct(">4sII")
SUBMIT_JOB_BG = 18
JOB_CREATED = 8


def start_gearmand(directory: Path) -> tuple[subprocess.Popen[bytes], Endpoint]:
    binary = shutil.which("gearmand")
    if binary is None:
        sys.exit("gearmand is not installed: apt-get install -y gearman-job-server")
    endpoint = Endpoint(HOST, free_port())
    argv = [
        binary, "--listen", HOST, "--port", str(endpoint.port), "--threads", "1",
        "--hashtable-buckets", "200003", "--log-file", str(directory / "gearmand.log"),
        "--verbose", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: is_serving(endpoint, 0.5),
        timeout=10,
        what="gearmand",
        alive=lambda: proc.poll() is None,
    )
    return proc, endpoint


def raw_submit(endpoint: Endpoint, function: str, uniques: list[str]) -> int:
    """Pipelined SUBMIT_JOB_BG on a bare socket: at most WINDOW unanswered, half-window sends."""
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    name = function.encode()
    pack = HEADER.pack
    half = WINDOW // 2
    sent = answered = 0
    buffer = b""
    total = len(uniques)
    try:
        while answered < total:
            while sent < total and sent - answered + half <= WINDOW:
                parts = []
                for unique in uniques[sent : sent + half]:
                    data = b"%s\0%s\0%s" % (name, unique.encode(), PAYLOAD)
                    parts.append(pack(b"\0REQ", SUBMIT_JOB_BG, len(data)))
                    parts.append(data)
                sock.sendall(b"".join(parts))
                sent += len(parts) // 2
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionError("gearmand closed the connection")
            buffer += chunk
            offset = 0
            while len(buffer) - offset >= 12:
                _, type_, size = HEADER.unpack_from(buffer, offset)
                if len(buffer) - offset < 12 + size:
                    break
                if type_ != JOB_CREATED:
                    raise RuntimeError(f"gearmand answered {type_}")
                offset += 12 + size
                answered += 1
            buffer = buffer[offset:]
    finally:
        sock.close()
    return answered


def raw_generating(endpoint: Endpoint, function: str, jobs: int) -> int:
    """The raw submitter making its UUID4 uniques the way Client does, inside the timing."""
    return raw_submit(endpoint, function, new_uniques(jobs))


def protocol_submit(endpoint: Endpoint, function: str, uniques: list[str]) -> int:
    """GearmanConnection.submit_background_many alone: what Client builds on."""
    with GearmanConnection(endpoint) as conn:
        jobs = [(function, unique, PAYLOAD, "normal") for unique in uniques]
        return len(conn.submit_background_many(jobs, window=WINDOW))


def client_submit(endpoint: Endpoint, function: str, uniques: list[str]) -> int:
    with Client(servers=[endpoint]) as client:
        jobs = [(function, PAYLOAD, unique) for unique in uniques]
        return len(client.submit_background_many(jobs, window=WINDOW))


def client_generating(endpoint: Endpoint, function: str, jobs: int) -> int:
    with Client(servers=[endpoint]) as client:
        return len(client.submit_background_many([(function, PAYLOAD)] * jobs, window=WINDOW))


GIVEN: dict[str, Callable[[Endpoint, str, list[str]], int]] = {
    "raw": raw_submit,
    "client": client_submit,
    "protocol": protocol_submit,
}
GENERATED: dict[str, Callable[[Endpoint, str, int], int]] = {
    "raw_generated": raw_generating,
    "client_generated": client_generating,
}
LABELS = {
    "raw": "raw socket, uniques given",
    "client": "Client, uniques given",
    "protocol": "GearmanConnection, given",
    "raw_generated": "raw socket, UUID4 generated",
    "client_generated": "Client, UUID4 generated",
}


def timed(run: Callable[[], int], jobs: int) -> tuple[float, float]:
    """(jobs/s, CPU microseconds per job of this process) of one run."""
    start, cpu = time.perf_counter(), time.process_time()
    count = run()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if count != jobs:
        raise RuntimeError(f"{count} of {jobs} jobs acknowledged")
    return jobs / elapsed, cpu / jobs * 1e6


def bench_submit(directory: Path, jobs: int, rounds: int) -> dict[str, object]:
    """Each round: a fresh gearmand (so queue depth does not favour the first run), every run
    once on it; the run order is reversed every other round and each compared pair is adjacent."""
    order = ["raw", "client", "raw_generated", "client_generated", "protocol"]
    rates: dict[str, list[float]] = {name: [] for name in order}
    cpus: dict[str, list[float]] = {name: [] for name in order}
    for r in range(rounds):
        proc, endpoint = start_gearmand(directory)
        try:
            for name in order if r % 2 == 0 else reversed(order):
                function = f"bench-{name}-{r}"
                if name in GIVEN:
                    uniques = [str(uuid.uuid4()) for _ in range(jobs)]
                    run = partial(GIVEN[name], endpoint, function, uniques)
                else:
                    run = partial(GENERATED[name], endpoint, function, jobs)
                rate, cpu = timed(run, jobs)
                rates[name].append(rate)
                cpus[name].append(cpu)
        finally:
            stop_pid(proc.pid)
            proc.wait()
    ratios = [c / r for c, r in zip(rates["client"], rates["raw"], strict=True)]
    generated = [
        c / r for c, r in zip(rates["client_generated"], rates["raw_generated"], strict=True)
    ]
    print(f"background submit: {jobs} jobs per run, {rounds} rounds (fresh gearmand each),")
    print(f"  64-byte payload, window {WINDOW}; median of rounds (every round)")
    for name in order:
        print(
            f"  {LABELS[name] + ':':30}{median(rates[name]):>9,.0f} jobs/s"
            f"  {median(cpus[name]):5.2f} us CPU/job  ({_rates(rates[name])})"
        )
    for label, values in (("uniques given", ratios), ("UUID4 generated", generated)):
        print(
            f"  ratio Client/raw, {label}: median {median(values):.2f}"
            f" (rounds: {', '.join(f'{x:.2f}' for x in values)})"
        )
    return {
        "jobs": jobs,
        "rounds": rounds,
        "window": WINDOW,
        "rates": rates,
        "cpu_us_per_job": cpus,
        "ratio_given": ratios,
        "ratio_generated": generated,
        "median_ratio_given": median(ratios),
        "median_ratio_generated": median(generated),
    }


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


def _worker_main(endpoint: str, function: str, ready, go) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(servers=[endpoint])
    worker.register(function, lambda job: b"")
    ready.set()
    go.wait()
    worker.work()


def bench_workers(endpoint: Endpoint, jobs: int, processes: int) -> float:
    function = f"bench-worker-{processes}"
    with Client(servers=[endpoint]) as client:
        client.submit_background_many([(function, PAYLOAD)] * jobs)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    readies, procs = [], []
    for _ in range(processes):
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(str(endpoint), function, ready, go))
        proc.start()
        readies.append(ready)
        procs.append(proc)
    try:
        for ready in readies:
            ready.wait(10)
        admin = AdminClient(endpoint)
        start = time.perf_counter()
        go.set()
        while True:
            left = sum(f.queued for f in admin.status() if f.name == function)
            if left == 0:
                break
            time.sleep(0.005)
        rate = jobs / (time.perf_counter() - start)
    finally:
        for proc in procs:
            stop_pid(proc.pid, timeout=5)
            proc.join(5)
    print(f"  {processes} worker process(es): {rate:>9,.0f} jobs/s ({jobs} no-op jobs)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--worker-jobs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.rounds, args.worker_jobs = 5000, 2, 1000
    with tempfile.TemporaryDirectory(prefix="gearctl-bench-") as tmp:
        results = bench_submit(Path(tmp), args.jobs, args.rounds)
        proc, endpoint = start_gearmand(Path(tmp))
        try:
            print("worker throughput (one gearmand)")
            results["worker_jobs"] = args.worker_jobs
            results["worker_rates"] = {
                str(n): bench_workers(endpoint, args.worker_jobs, n) for n in (1, 4)
            }
        finally:
            stop_pid(proc.pid)
            proc.wait()
    save("client_throughput", {"quick": args.quick, **results})


if __name__ == "__main__":
    main()
