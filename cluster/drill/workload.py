"""Drill and test workloads: numbered background jobs in, a worker that counts each unique out.

The ledger follows Jepsen's total-queue checker: every acknowledged job must be executed
(else lost), once (else duplicated), and nothing must be executed that was not submitted
(unexpected).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.client import Client, Worker, WorkerJob
from cluster.gearman.discovery import server_source
from cluster.gearman.protocol import GearmanConnection

PRIORITIES = ("high", "normal", "low")
FUNCTIONS = ("img-resize", "mail", "search-index-v2")


@dataclass(frozen=True)
class Job:
    function: str
    unique: str
    payload: bytes
    priority: str


def numbered_jobs(count: int, prefix: str = "job") -> list[Job]:
    """Jobs with unique `<prefix>-<n>`, cycling through dashed functions and all priorities."""
    return [
        Job(
            function=FUNCTIONS[n % len(FUNCTIONS)],
            unique=f"{prefix}-{n}",
            payload=f"payload {n} ".encode() * (1 + n % 5),
            priority=PRIORITIES[(n // 3) % len(PRIORITIES)],
        )
        for n in range(count)
    ]


def submit(endpoint: Endpoint, jobs: Sequence[Job]) -> int:
    """Submit pipelined; returns how many were acknowledged (JOB_CREATED)."""
    with GearmanConnection(endpoint) as conn:
        handles = conn.submit_background_many(
            (job.function, job.unique, job.payload, job.priority) for job in jobs
        )
    return len(handles)


@dataclass
class Drained:
    counts: Counter[str] = field(default_factory=Counter)
    order: list[tuple[str, str, str]] = field(default_factory=list)  # (function, unique, server)
    payloads: dict[str, bytes] = field(default_factory=dict)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)


@dataclass(frozen=True)
class Ledger:
    attempted: int
    acknowledged: int
    executed: int
    lost: int
    duplicated: int  # extra executions, but the re-runs below
    unexpected: int
    # Extra executions of a job that was in flight when its gearmand died (at-least-once:
    # its key was never deleted): at most one per worker connection that broke.
    reruns: int = 0
    in_flight_at_faults: int = 0
    refused: int = 0  # submits a server refused (ERROR): never acknowledged, must never run

    @classmethod
    def count(
        cls,
        attempted: int,
        acknowledged: set[str],
        drained: Drained,
        in_flight: set[str] | frozenset[str] = frozenset(),
        refused: int = 0,
    ) -> Ledger:
        reruns = sum(1 for u in in_flight if drained.counts[u] > 1)
        return cls(
            attempted=attempted,
            acknowledged=len(acknowledged),
            executed=sum(drained.counts.values()),
            lost=len(acknowledged - set(drained.counts)),
            duplicated=drained.duplicates() - reruns,
            unexpected=len(set(drained.counts) - acknowledged),
            reruns=reruns,
            in_flight_at_faults=len(in_flight),
            refused=refused,
        )

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.__dict__.items())


def drain(
    endpoints: Iterable[Endpoint], functions: Iterable[str], expected: int, timeout: float = 120
) -> Drained:
    """Grab jobs from every server until `expected` were done and all servers are empty."""
    result = Drained()
    conns = [(ep, GearmanConnection(ep)) for ep in endpoints]
    try:
        for _, conn in conns:
            for function in functions:
                conn.can_do(function)
        deadline = time.monotonic() + timeout
        idle_rounds = 0
        while time.monotonic() < deadline:
            got = 0
            for endpoint, conn in conns:
                try:
                    job = conn.grab_job_uniq()
                except GearctlError:
                    continue
                if job is None:
                    continue
                got += 1
                result.counts[job.unique] += 1
                result.order.append((job.function, job.unique, str(endpoint)))
                result.payloads[job.unique] = job.payload
                conn.work_complete(job.handle, b"")
            if got == 0:
                idle_rounds += 1
                if sum(result.counts.values()) >= expected and idle_rounds > 3:
                    break
                time.sleep(0.05)
            else:
                idle_rounds = 0
    finally:
        for _, conn in conns:
            conn.close()
    return result


BACKGROUND_WORK = 0.002  # seconds per background job: the fault finds one in flight


class BackgroundWorkers:
    """Workers that grab and run background jobs on every node's gearmand from before the
    fault to the end, as production workers would, one thread and connection per node.

    A connection runs one job at a time: grab, run, WORK_COMPLETE, grab the next. gearmand
    handles a connection's packets in order, so an answer to the next grab proves the last
    WORK_COMPLETE was taken. The last job of a connection that then breaks is `in_flight`:
    its gearmand may have died before deleting it, and may run it again. Use as a context
    manager; `drained` counts every execution."""

    def __init__(
        self, endpoints: Iterable[Endpoint], functions: Iterable[str], zookeeper: str, cluster: str
    ) -> None:
        self.functions = tuple(functions)
        # Only live servers, as a Worker following ZooKeeper: a `store-lost` node is left
        # alone (its gearmand cannot delete a completed job and would hand it out again).
        self.source = server_source(None, zookeeper, cluster)
        self.drained = Drained()
        self.in_flight: set[str] = set()
        self.broken_connections = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(e,), daemon=True)
                         for e in endpoints]  # fmt: skip

    def __enter__(self) -> BackgroundWorkers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)
        self.source.close()

    def executed(self) -> set[str]:
        with self._lock:
            return set(self.drained.counts)

    def wait_done(self, expected: set[str], timeout: float = 120) -> None:
        """Until every `expected` job ran and nothing ran for a while (all servers empty), or
        no job ran for `timeout` s (the rest is lost): a 100k-job drill's workers need longer
        than any fixed total."""
        quiet_since, seen = time.monotonic(), -1
        while time.monotonic() - quiet_since < timeout:
            with self._lock:
                total = sum(self.drained.counts.values())
                done = expected <= set(self.drained.counts)
            if total != seen:
                quiet_since, seen = time.monotonic(), total
            if done and time.monotonic() - quiet_since > 1.0:
                return
            time.sleep(0.05)

    def _serve(self, endpoint: Endpoint) -> None:
        while not self._stopping.is_set():
            last: str | None = None
            if endpoint not in self.source.servers():
                self._stopping.wait(0.05)
                continue
            try:
                with GearmanConnection(endpoint, connect_timeout=0.5, read_timeout=2.0) as conn:
                    for function in self.functions:
                        conn.can_do(function)
                    while not self._stopping.is_set() and endpoint in self.source.servers():
                        job = conn.grab_job_uniq()
                        last = None  # the answer proves the last WORK_COMPLETE was taken
                        if job is None:
                            self._stopping.wait(0.05)
                            continue
                        with self._lock:
                            self.drained.counts[job.unique] += 1
                            self.drained.order.append((job.function, job.unique, str(endpoint)))
                        last = job.unique
                        time.sleep(BACKGROUND_WORK)
                        conn.work_complete(job.handle, b"")
            except GearctlError:
                with self._lock:
                    if last is not None:
                        self.in_flight.add(last)
                        self.broken_connections += 1
            self._stopping.wait(0.2)


FOREGROUND_FUNCTION = "drill-echo"
FOREGROUND_CLIENTS = 2  # threads, each with its own failover Client
FOREGROUND_WORK = 0.02  # seconds the worker spends on each job: a job is nearly always in flight
FOREGROUND_PAUSE = 0.005  # seconds between one client's submits
FOREGROUND_TIMEOUT = 60.0
FOREGROUND_WARM_UP = 6  # answers per client before the fault: round robin over every server


def foreground_result(unique: str, payload: bytes) -> bytes:
    """What the drill's worker answers for a foreground job (checked by the submitter)."""
    return unique.encode() + b":" + payload[::-1]


@dataclass(frozen=True)
class ForegroundLedger:
    """Foreground jobs in the same total-queue form, plus `failed`: submits that raised (no
    server took the job within the Client's retry time, or no result in time)."""

    attempted: int
    acknowledged: int  # submits that returned the expected result
    executed: int
    lost: int  # submits that neither returned nor raised (still hanging at the end)
    duplicated: int  # extra executions, but the re-runs below
    unexpected: int  # wrong results, and executions of uniques never submitted
    failed: int
    # Extra executions of a job whose submit failed over from a server (it may have run there,
    # its result lost with the connection: at least once, as Client.submit says): at most one
    # per failover.
    reruns: int = 0
    failovers: int = 0  # attempts that failed on a server and went on to another: the bound

    @classmethod
    def count(
        cls,
        attempted: set[str],
        answered: set[str],
        wrong: list[str],
        failed: int,
        executions: Counter[str],
        failovers: Counter[str],
    ) -> ForegroundLedger:
        """The ledger of submits (`attempted` uniques; `answered` right, `wrong`, `failed`
        raised), the worker's `executions` and each submit's `failovers`, by unique."""
        extra = {unique: n - 1 for unique, n in executions.items() if n > 1}
        reruns = sum(min(n, failovers[unique]) for unique, n in extra.items())
        return cls(
            attempted=len(attempted),
            acknowledged=len(answered),
            executed=sum(executions.values()),
            lost=len(attempted) - len(answered) - len(wrong) - failed,
            duplicated=sum(extra.values()) - reruns,
            unexpected=len(wrong) + len(set(executions) - attempted),
            failed=failed,
            reruns=reruns,
            failovers=sum(failovers.values()),
        )

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.__dict__.items())


class ForegroundLoad:
    """Foreground jobs through `cluster.gearman.client.Client.submit` while a fault runs.

    A `cluster.gearman.client.Worker` serves FOREGROUND_FUNCTION on every live server (following
    ZooKeeper, as the clients do) and counts each execution by unique; FOREGROUND_CLIENTS
    threads submit `<prefix>-fg<client>-<n>` one after the other until `stop()`. Use as a
    context manager: `start()` on enter, `stop()` on exit."""

    def __init__(self, zookeeper: str, cluster: str, prefix: str) -> None:
        self._client_factory = lambda on_failover: Client(
            zookeeper=zookeeper, cluster=cluster, on_failover=on_failover
        )
        self.prefix = prefix
        self.executions: Counter[str] = Counter()
        self.failovers: Counter[str] = Counter()  # by unique: servers its submit left
        self.attempted: set[str] = set()
        self.answered: set[str] = set()
        self.wrong: list[str] = []
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._worker = Worker(zookeeper=zookeeper, cluster=cluster)
        self._worker.register(FOREGROUND_FUNCTION, self._execute)
        self._threads = [threading.Thread(target=self._worker.work, daemon=True)] + [
            threading.Thread(target=self._submit_loop, args=(i,), daemon=True)
            for i in range(FOREGROUND_CLIENTS)
        ]
        self._lock = threading.Lock()

    def __enter__(self) -> ForegroundLoad:
        """Start, and return once jobs flow: every client has had answers from several servers
        (so that the fault lands while jobs are in flight, not before the first one)."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + FOREGROUND_TIMEOUT
        while len(self.answered) < FOREGROUND_CLIENTS * FOREGROUND_WARM_UP:
            if time.monotonic() > deadline or self.failures or self.wrong:
                self.stop()
                raise GearctlError(f"foreground jobs do not run: {self.ledger()}, "
                                   f"failures {self.failures[:1]}")  # fmt: skip
            time.sleep(0.01)
        time.sleep(random.uniform(0, 10 * FOREGROUND_WORK))  # the fault falls on any server's job
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _execute(self, job: WorkerJob) -> bytes:
        with self._lock:
            self.executions[job.unique] += 1
        time.sleep(FOREGROUND_WORK)
        return foreground_result(job.unique, job.payload)

    def _submit_loop(self, client_index: int) -> None:
        submitting = [""]  # the unique this thread's client submits now

        def failed_over(_server: Endpoint) -> None:
            with self._lock:
                self.failovers[submitting[0]] += 1

        with self._client_factory(failed_over) as client:
            n = 0
            while not self._stopping.is_set():
                unique = submitting[0] = f"{self.prefix}-fg{client_index}-{n}"
                payload = f"fg {n} ".encode() * (1 + n % 4)
                with self._lock:
                    self.attempted.add(unique)
                try:
                    result = client.submit(FOREGROUND_FUNCTION, payload, unique=unique,
                                           timeout=FOREGROUND_TIMEOUT)  # fmt: skip
                except GearctlError as exc:
                    with self._lock:
                        self.failures.append(f"{unique}: {exc}")
                else:
                    with self._lock:
                        if result == foreground_result(unique, payload):
                            self.answered.add(unique)
                        else:
                            self.wrong.append(unique)
                n += 1
                self._stopping.wait(FOREGROUND_PAUSE)

    def stop(self) -> None:
        """Stop submitting, wait for the submits in flight, then stop the worker."""
        self._stopping.set()
        for thread in self._threads[1:]:
            thread.join(FOREGROUND_TIMEOUT + 10)
        self._worker.stop()
        self._threads[0].join(10)
        self._worker.close()

    def ledger(self) -> ForegroundLedger:
        with self._lock:
            return ForegroundLedger.count(
                self.attempted,
                self.answered,
                self.wrong,
                len(self.failures),
                self.executions,
                self.failovers,
            )
