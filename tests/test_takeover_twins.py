"""Take-over of a node with twin stores (issue 18): under the node's one owner znode both twins
are drained, every job exactly once, the older twin first; an interrupted drain leaves the rest
for the next claim. Real gearmand, memcached and ZooKeeper."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster import coord
from cluster.claim import Drained, claim_and_drain
from cluster.coord import Outcome, StoreRecord
from cluster.drill.workload import FUNCTIONS, Job, drain, numbered_jobs
from cluster.endpoint import Endpoint
from cluster.functions import FunctionRegistry
from cluster.jobkey import parse_job_key
from cluster.process import read_pidfile
from cluster.restore import CHUNK, Progress
from cluster.store import Store
from cluster.takeover import TakeoverWatcher
from tests.conftest import RunningGearmand, running_memcached
from tests.test_restore import check_drained
from tests.twinstores import persist, stopped

pytestmark = pytest.mark.integration

OLDER = CHUNK + CHUNK // 2  # jobs in the twin (an earlier incarnation's store): two chunks
NEWER = CHUNK  # jobs in the store the dead gearmand wrote


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[StoreRecord, list[Job]]]:
    """A dead node's store record with a twin: the twin holds the older jobs (`g1_`), the store
    its last gearmand wrote the newer ones (`g2_`)."""
    jobs = numbered_jobs(OLDER + NEWER, prefix="twin")
    with running_memcached(tmp_path, "twin") as twin, running_memcached(tmp_path, "store") as store:
        persist(twin, "g1_", jobs[:OLDER], tmp_path)
        dead = persist(store, "g2_", jobs[OLDER:], tmp_path)
        yield StoreRecord(str(store), str(dead), "h", None, twin=str(twin)), jobs


def uniques_in(store: Endpoint) -> Counter[str]:
    """Every stored job's unique, counted (a job stored twice counts 2)."""
    keys = [item.key for item in Store(store).snapshot()]
    return Counter(parse_job_key(key, set(FUNCTIONS)).unique for key in keys)


def take_over(
    session: coord.Coordination,
    record: StoreRecord,
    target: Endpoint,
    by: str,
    keep_going: Callable[[], bool] = lambda: True,
    progress: Progress | None = None,
) -> Drained:
    """Dead node2's stores drained into `target` for node `by`."""
    return claim_and_drain(session, "node2", record, target, by=by, progress=progress,
                           known=lambda: set(FUNCTIONS), keep_going=keep_going)  # fmt: skip


def test_both_twins_are_drained_exactly_once_under_one_claim(
    twins: tuple[StoreRecord, list[Job]], gearmand: RunningGearmand, zookeeper: Endpoint
) -> None:
    record, jobs = twins
    shown: list[tuple[int, int]] = []
    with coord.session(str(zookeeper), f"twins-{uuid.uuid4().hex[:8]}") as session:
        drained = take_over(session, record, gearmand.endpoint, "node1",
                            progress=lambda r: shown.append((r.moved, r.expected)))  # fmt: skip
        (history,) = session.takeover_history()
        assert session.owner("node2") is None  # released
    assert drained.takeover.outcome is Outcome.DONE
    assert drained.takeover.jobs == history.jobs == OLDER + NEWER
    assert drained.report is not None and drained.report.expected == OLDER + NEWER
    assert {expected for _, expected in shown} == {OLDER + NEWER}  # the whole take-over's
    assert shown == sorted(shown) and shown[-1][0] >= OLDER  # the twin counts on in the store
    assert [Store(Endpoint.parse(a)).curr_items() for a in record.addresses] == [0, 0]
    stored = uniques_in(gearmand.store)  # the target re-persisted each job once
    assert stored == Counter(job.unique for job in jobs)
    check_drained(gearmand.endpoint, jobs, fifo=True)  # the twin's older jobs came first


@pytest.mark.parametrize("chunks_before_stop", [1, 2], ids=["in-the-twin", "between-twins"])
def test_an_interrupted_drain_leaves_the_rest_to_the_next_claim(
    twins: tuple[StoreRecord, list[Job]],
    gearmand: RunningGearmand,
    zookeeper: Endpoint,
    chunks_before_stop: int,
) -> None:
    record, jobs = twins
    asked: list[bool] = []

    def stop_after_chunks() -> bool:
        asked.append(True)
        return len(asked) <= chunks_before_stop

    with coord.session(str(zookeeper), f"twins-{uuid.uuid4().hex[:8]}") as session:
        first = take_over(session, record, gearmand.endpoint, "node1", stop_after_chunks)
        second = take_over(session, record, gearmand.endpoint, "node3")
    moved_first = min(chunks_before_stop * CHUNK, OLDER)
    assert (first.takeover.outcome, first.takeover.jobs) == (Outcome.INTERRUPTED, moved_first)
    assert (second.takeover.outcome, second.takeover.jobs) == (
        Outcome.DONE,
        len(jobs) - moved_first,
    )
    assert [Store(Endpoint.parse(a)).curr_items() for a in record.addresses] == [0, 0]
    assert uniques_in(gearmand.store) == Counter(job.unique for job in jobs)
    check_drained(gearmand.endpoint, jobs, fifo=True)


@pytest.fixture
def copied(tmp_path: Path) -> Iterator[tuple[StoreRecord, list[Job], int]]:
    """A dead node whose last restore crashed between gearmand's answers and the deletes: its
    first `COPIED` older jobs are in the twin (`g1_`) and, re-persisted, in the store (`g2_`)."""
    jobs = numbered_jobs(OLDER + NEWER, prefix="copy")
    copied = CHUNK // 2
    with running_memcached(tmp_path, "twin") as twin, running_memcached(tmp_path, "store") as store:
        persist(twin, "g1_", jobs[:OLDER], tmp_path)
        dead = persist(store, "g2_", jobs[:copied] + jobs[OLDER:], tmp_path)
        yield StoreRecord(str(store), str(dead), "h", None, twin=str(twin)), jobs, copied


def test_a_job_in_both_twins_is_queued_once_even_when_a_worker_ran_it_between(
    copied: tuple[StoreRecord, list[Job], int], gearmand: RunningGearmand, zookeeper: Endpoint
) -> None:
    """Workers run the twin's jobs before the second store is drained: without one record of
    the jobs seen across both stores, the copies would be queued (and run) a second time."""
    record, jobs, copies = copied
    ran: list[Counter[str]] = []

    def run_the_twins_jobs_first() -> bool:
        if not ran and Store(Endpoint.parse(record.twin or "")).curr_items() == 0:
            ran.append(drain([gearmand.endpoint], FUNCTIONS, OLDER, timeout=60).counts)
        return True

    with coord.session(str(zookeeper), f"twins-{uuid.uuid4().hex[:8]}") as session:
        drained = take_over(session, record, gearmand.endpoint, "node1", run_the_twins_jobs_first)
    assert drained.takeover.outcome is Outcome.DONE
    assert drained.report is not None and drained.report.coalesced == copies
    assert [Store(Endpoint.parse(a)).curr_items() for a in record.addresses] == [0, 0]
    (first,) = ran
    assert first == Counter(job.unique for job in jobs[:OLDER])
    rest = drain([gearmand.endpoint], FUNCTIONS, NEWER, timeout=60).counts
    assert rest == Counter(job.unique for job in jobs[OLDER:])  # no copy ran a second time


@contextmanager
def twin_stopped(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """The twin memcached of `twins` stopped (SIGSTOP); the callable resumes it (SIGCONT), as
    the end of the block does whatever happens."""
    pid = read_pidfile(tmp_path / "twin.pid")
    assert pid is not None
    with stopped(pid) as resume:
        yield resume


def check_each_job_once(record: StoreRecord, gearmand: RunningGearmand, jobs: list[Job]) -> None:
    """Both twins empty, every job re-persisted once by the target, and run once (the newer
    jobs were queued first: FIFO does not hold across a pending twin)."""
    assert [Store(Endpoint.parse(a)).curr_items() for a in record.addresses] == [0, 0]
    assert uniques_in(gearmand.store) == Counter(job.unique for job in jobs)
    check_drained(gearmand.endpoint, jobs, fifo=False)


def test_a_silent_twin_is_left_pending_and_the_next_claim_drains_it_once_it_answers(
    tmp_path: Path,
    twins: tuple[StoreRecord, list[Job]],
    gearmand: RunningGearmand,
    zookeeper: Endpoint,
) -> None:
    """The twin (older jobs) is stopped: the claim drains the store that answers and records
    the twin pending; after SIGCONT the next claim drains the twin, each job once."""
    record, jobs = twins
    with (
        twin_stopped(tmp_path) as resume,
        coord.session(str(zookeeper), f"twins-{uuid.uuid4().hex[:8]}") as session,
    ):
        first = take_over(session, record, gearmand.endpoint, "node1")
        described = session.store_record("node2")
        assert described is not None and described.pending == record.twin
        resume()
        second = take_over(session, described, gearmand.endpoint, "node3")
        after = session.store_record("node2")
        history = session.takeover_history()
    assert (first.takeover.outcome, first.takeover.jobs) == (Outcome.DONE, NEWER)
    assert first.takeover.pending == record.twin
    assert (second.takeover.outcome, second.takeover.jobs) == (Outcome.DONE, OLDER)
    assert second.takeover.pending is None
    assert after is not None and after.pending is None
    assert [h.pending for h in history] == [record.twin, None]
    check_each_job_once(record, gearmand, jobs)


def test_a_survivor_drains_the_answering_twin_and_later_the_pending_one_once_it_answers(
    tmp_path: Path,
    twins: tuple[StoreRecord, list[Job]],
    gearmand: RunningGearmand,
    zookeeper: Endpoint,
) -> None:
    """The survivor's scan (TakeoverWatcher) with node2's twin stopped: the store that answers
    is drained at once; while the twin stays silent nothing more happens; once it answers the
    next scan claims node2 again and drains it, each job once."""
    record, jobs = twins
    with (
        twin_stopped(tmp_path) as resume,
        coord.session(str(zookeeper), f"twins-{uuid.uuid4().hex[:8]}") as session,
    ):
        session.describe_store("node2", record)
        FunctionRegistry(session).publish(FUNCTIONS)
        watcher = TakeoverWatcher(session, "node1", gearmand.endpoint, lambda: True,
                                  threading.Event())  # fmt: skip
        watcher._take_over("node2")
        watcher._take_over("node2")  # the twin still silent: nothing to claim
        first = session.takeover_history()
        resume()
        watcher._take_over("node2")
        history = session.takeover_history()
        after = session.store_record("node2")
    assert [(h.jobs, h.pending) for h in first] == [(NEWER, record.twin)]
    assert [(h.outcome, h.jobs, h.pending) for h in history] == [
        (Outcome.DONE, NEWER, record.twin),
        (Outcome.DONE, OLDER, None),
    ]
    assert after is not None and after.pending is None
    check_each_job_once(record, gearmand, jobs)
