"""What sharing one `Client` between threads costs against one Client per thread (the only safe
use before issue 17): background submits one by one (each a round trip) from 1, 4 and 16
threads against one gearmand, the same number of jobs both ways, run order alternated.

A shared Client checks a connection out of its per-server pool for each call and puts it back
(a lock, a list pop and append); with T threads it ends up with up to T connections per server,
like T Clients.

    .venv/bin/python bench/client_threads.py [--jobs 6000] [--rounds 5] [--quick]

Starts and stops its own gearmand, by PID. Writes bench/results/client_threads.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client_throughput import start_gearmand
from bench.common import median, save, table
from cluster.endpoint import Endpoint
from cluster.gearman.client import Client
from cluster.process import stop_pid

THREADS = (1, 4, 16)
PAYLOAD = b"x" * 64


def run(endpoint: Endpoint, threads: int, jobs: int, shared: bool) -> tuple[float, float]:
    """(jobs/s, CPU µs per job of this process) of `threads` threads submitting `jobs`
    background jobs in all."""
    each = jobs // threads
    clients = [Client(servers=[endpoint])] * threads if shared else [
        Client(servers=[endpoint]) for _ in range(threads)
    ]  # fmt: skip
    for client in set(clients):
        client.submit_background("warm-up", PAYLOAD)  # connect outside the timing
    start = threading.Barrier(threads + 1)

    def submit(client: Client) -> None:
        start.wait()
        for _ in range(each):
            client.submit_background("bench-threads", PAYLOAD)

    workers = [threading.Thread(target=submit, args=(c,)) for c in clients]
    for worker in workers:
        worker.start()
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    for client in set(clients):
        client.close()
    return each * threads / elapsed, cpu / (each * threads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.rounds = 480, 1
    rates: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_gearmand(Path(tmp))
        try:
            for round_ in range(args.rounds):
                for threads in THREADS:
                    ways = [False, True] if round_ % 2 == 0 else [True, False]
                    for shared in ways:
                        rate, micros = run(endpoint, threads, args.jobs, shared)
                        way = "shared" if shared else "per-thread"
                        rates.setdefault(str(threads), {}).setdefault(way, []).append(rate)
                        cpu.setdefault(str(threads), {}).setdefault(way, []).append(micros)
                        print(f"{threads:>2} threads, {way:>10} Client: {rate:>8,.0f} jobs/s, "
                              f"{micros:.1f} CPU µs/job")  # fmt: skip
        finally:
            stop_pid(proc.pid)
            proc.wait()
    summary = {t: {way: median(v) for way, v in by.items()} for t, by in rates.items()}
    cpu_summary = {t: {way: median(v) for way, v in by.items()} for t, by in cpu.items()}
    rows = [
        [t, f"{by['per-thread']:,.0f}", f"{by['shared']:,.0f}",
         f"{by['shared'] / by['per-thread']:.2f}",
         f"{cpu_summary[t]['per-thread']:.1f}", f"{cpu_summary[t]['shared']:.1f}"]
        for t, by in summary.items()
    ]  # fmt: skip
    headers = ["threads", "per thread jobs/s", "shared jobs/s", "ratio", "CPU µs/job per thread",
               "CPU µs/job shared"]  # fmt: skip
    print(table(headers, rows))
    save("client_threads", {"rates": rates, "cpu_us_per_job": cpu, "median": summary,
                            "median_cpu_us_per_job": cpu_summary, "args": vars(args),
                            "quick": args.quick})  # fmt: skip


if __name__ == "__main__":
    main()
