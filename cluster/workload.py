"""Drill and test workloads: numbered background jobs in, a worker that counts each unique out.

The ledger follows Jepsen's total-queue checker: every acknowledged job must be executed
(else lost), once (else duplicated), and nothing must be executed that was not submitted
(unexpected).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.protocol import GearmanConnection

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
    duplicated: int
    unexpected: int

    @classmethod
    def count(cls, attempted: int, acknowledged: set[str], drained: Drained) -> Ledger:
        return cls(
            attempted=attempted,
            acknowledged=len(acknowledged),
            executed=sum(drained.counts.values()),
            lost=len(acknowledged - set(drained.counts)),
            duplicated=drained.duplicates(),
            unexpected=len(set(drained.counts) - acknowledged),
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
