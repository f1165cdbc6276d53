"""A workload through the rolled-out cluster while a rollout restarts it (tests/rollout/run.sh).

Three threads until SIGTERM: a client submits numbered background jobs (`rollout-load-<n>`, one
each 20 ms) through the cluster's gearmand servers with failover (a restarting node refuses, the
next takes the job); a worker on every server runs them and counts each unique; a sampler asks
every server's admin `status` every 0.1 s and records how many answered. On SIGTERM: submits
stop, the worker drains what was acknowledged, and the ledger is printed. Exit 1 when a job was
lost, doubled or unexpected, a submit found no server, or some sample saw no node serving.

    workload.py --servers H:P,H:P,H:P
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections import Counter

from cluster.drill.workload import Drained, Ledger
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient
from cluster.gearman.client import Client, Worker, WorkerJob

FUNCTION = "rollout-load"
SUBMIT_PAUSE = 0.02
SAMPLE_PAUSE = 0.1
DRAIN_TIMEOUT = 120.0


def say(text: str) -> None:
    print(f"[workload] {text}", file=sys.stderr, flush=True)


class Workload:
    def __init__(self, servers: list[Endpoint]) -> None:
        self.servers = servers
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: set[str] = set()
        self.attempted = 0
        self.failed: list[str] = []
        self.drained = Drained()
        self.samples: Counter[int] = Counter()  # serving nodes -> samples
        self.dark: list[str] = []  # times no node answered
        self.worker = Worker(servers)
        self.worker.register(FUNCTION, self.execute)

    def execute(self, job: WorkerJob) -> bytes:
        with self.lock:
            self.drained.counts[job.unique] += 1
            self.drained.order.append((job.function, job.unique, str(job.server)))
        return b""

    def submit_loop(self) -> None:
        with Client(self.servers, retry_timeout=30.0) as client:
            n = 0
            while not self.stopping.is_set():
                unique = f"rollout-load-{n}"
                self.attempted += 1
                try:
                    client.submit_background(FUNCTION, f"job {n}", unique=unique)
                except GearctlError as exc:
                    self.failed.append(f"{unique}: {exc}")
                else:
                    with self.lock:
                        self.acknowledged.add(unique)
                n += 1
                self.stopping.wait(SUBMIT_PAUSE)

    def sample_loop(self) -> None:
        while not self.stopping.is_set():
            serving = sum(1 for endpoint in self.servers if answers(endpoint))
            self.samples[serving] += 1
            if serving == 0:
                self.dark.append(time.strftime("%H:%M:%S"))
            self.stopping.wait(SAMPLE_PAUSE)

    def drain_rest(self) -> None:
        """Wait until the worker ran every acknowledged job (or DRAIN_TIMEOUT), then stop it."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            with self.lock:
                if self.acknowledged <= set(self.drained.counts):
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # a duplicate delivered late still counts
        self.worker.stop()


def answers(endpoint: Endpoint) -> bool:
    try:
        AdminClient(endpoint, timeout=0.5).status()
    except (GearctlError, OSError):
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", required=True)
    args = parser.parse_args()
    load = Workload([Endpoint.parse(s) for s in args.servers.split(",")])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    threads = [
        threading.Thread(target=load.worker.work, daemon=True),
        threading.Thread(target=load.submit_loop, daemon=True),
        threading.Thread(target=load.sample_loop, daemon=True),
    ]
    for thread in threads:
        thread.start()
    say(f"running through {args.servers}")
    while not stop.wait(0.5):
        pass
    load.stopping.set()
    threads[1].join(60)
    threads[2].join(10)
    load.drain_rest()
    threads[0].join(10)
    load.worker.close()
    ledger = Ledger.count(load.attempted, load.acknowledged, load.drained)
    samples = sum(load.samples.values())
    spread = " ".join(f"{k}:{v}" for k, v in sorted(load.samples.items()))
    print(f"ledger: {ledger} failed_submits={len(load.failed)}", flush=True)
    print(f"samples: {samples} (serving nodes:samples {spread}); none serving: {len(load.dark)}")
    for failure in load.failed[:3]:
        say(f"failed submit {failure}")
    if load.dark:
        say(f"no node serving at {', '.join(load.dark[:5])}")
    ok = ledger.lost == 0 and ledger.duplicated == 0 and ledger.unexpected == 0
    return 0 if ok and not load.failed and not load.dark and samples > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
