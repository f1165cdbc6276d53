"""Test helpers for twin stores (issue 18): a memcached of a test's own, and jobs persisted in a
store by a real gearmand that is then killed, as a dead incarnation leaves them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.drill.workload import Job, submit
from cluster.endpoint import Endpoint
from cluster.local.memcached_server import start_memcached
from cluster.process import free_port, kill_pid, stop_pid, wait_until
from cluster.store import Store
from tests.conftest import HOST
from tests.test_restore import started_gearmand


@contextmanager
def memcached(tmp_path: Path, name: str) -> Iterator[Endpoint]:
    """A memcached on a free loopback port, stopped (by its PID) at the end of the block."""
    endpoint = Endpoint(HOST, free_port())
    proc = start_memcached(endpoint, memory_mb=64, log_path=tmp_path / f"{name}.log",
                           pid_path=tmp_path / f"{name}.pid")  # fmt: skip
    try:
        yield endpoint
    finally:
        stop_pid(proc.pid)
        proc.wait()


def persist(store: Endpoint, prefix: str, jobs: list[Job], tmp_path: Path) -> Endpoint:
    """`jobs` persisted in `store` by a gearmand under `prefix`, killed (-9): its endpoint."""
    with started_gearmand(store, prefix, tmp_path) as (endpoint, pid):
        assert submit(endpoint, jobs) == len(jobs)
        kill_pid(pid)
    wait_until(lambda: Store(store).curr_items() == len(jobs), timeout=10, what="jobs stored")
    return endpoint
