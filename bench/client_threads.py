"""What sharing one `Client` between threads costs against one Client per thread (the only safe
use before issue 17): background submits one by one (each a round trip) from 1, 4 and 16
threads against one gearmand, the same number of jobs both ways, run order alternated.

A shared Client checks a connection out of its per-server pool for each call and puts it back
(a lock, a list pop and append); with T threads it ends up with up to T connections per server,
like T Clients.

    .venv/bin/python bench/client_threads.py [--jobs 6000] [--rounds 3]

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


def run(endpoint: Endpoint, threads: int, jobs: int, shared: bool) -> float:
    """Jobs/s of `threads` threads submitting `jobs` background jobs in all."""
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
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    for client in set(clients):
        client.close()
    return each * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_gearmand(Path(tmp))
        try:
            for round_ in range(args.rounds):
                for threads in THREADS:
                    ways = [False, True] if round_ % 2 == 0 else [True, False]
                    for shared in ways:
                        rate = run(endpoint, threads, args.jobs, shared)
                        way = "shared" if shared else "per-thread"
                        rates.setdefault(str(threads), {}).setdefault(way, []).append(rate)
                        print(f"{threads:>2} threads, {way:>10} Client: {rate:>8,.0f} jobs/s")
        finally:
            stop_pid(proc.pid)
            proc.wait()
    summary = {t: {way: median(v) for way, v in by.items()} for t, by in rates.items()}
    rows = [
        [t, f"{by['per-thread']:,.0f}", f"{by['shared']:,.0f}",
         f"{by['shared'] / by['per-thread']:.2f}"]
        for t, by in summary.items()
    ]  # fmt: skip
    print(table(["threads", "Client per thread", "one shared Client", "shared/per-thread"], rows))
    save("client_threads", {"rates": rates, "median": summary, "args": vars(args)})


if __name__ == "__main__":
    main()
