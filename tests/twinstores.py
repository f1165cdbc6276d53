"""Test helper for twin stores (issue 18): jobs persisted in a store by a real gearmand that is
then killed, as a dead incarnation leaves them (a store of a test's own:
`tests.conftest.running_memcached`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.drill.workload import Job, submit
from cluster.endpoint import Endpoint
from cluster.process import kill_pid, wait_until
from cluster.store import Store
from tests.test_restore import started_gearmand


def persist(store: Endpoint, prefix: str, jobs: list[Job], tmp_path: Path) -> Endpoint:
    """`jobs` persisted in `store` by a gearmand under `prefix`, killed (-9): its endpoint."""
    with started_gearmand(store, prefix, tmp_path) as (endpoint, pid):
        assert submit(endpoint, jobs) == len(jobs)
        kill_pid(pid)
    wait_until(lambda: Store(store).curr_items() == len(jobs), timeout=10, what="jobs stored")
    return endpoint


@contextmanager
def stopped(pid: int) -> Iterator[Callable[[], None]]:
    """The process `pid` (a twin memcached) stopped (SIGSTOP); the callable resumes it (SIGCONT),
    as the end of the block does whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield lambda: os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
