"""Exactly once under a full store (issue 14), against real gearmand 1.1.20 and memcached.

A store started with `-M -m 3` and filled with 50 kB items is full for large items but keeps room
in the slab class small jobs use: gearmand then refuses a 50 kB job with ERROR QUEUE_ERROR and goes
on to acknowledge the small ones after it in the same pipeline. Every answer must be mapped to its
job: only the refused job is sent again (Client), only the acknowledged keys are deleted (restore,
drain), and the refused one stays in the store and is reported.
"""

from __future__ import annotations

import itertools
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cluster import coord
from cluster.endpoint import Endpoint
from cluster.errors import StoreError
from cluster.functions import FunctionRegistry
from cluster.gearman.admin import STATUS_NAMES_BYTES, AdminClient
from cluster.gearman.client import Client
from cluster.gearman.protocol import GearmanConnection, PacketType, request
from cluster.health import Health, check_gearmand
from cluster.namebound import PER_MINUTE
from cluster.process import kill_pid
from cluster.restore import RestoreIncomplete, restore
from cluster.store import Store
from tests.clusterctl import local_cluster, node, status_json
from tests.clusterctl import wait_until as wait_status
from tests.conftest import RunningGearmand, running_memcached
from tests.test_restore import queued, started_gearmand

pytestmark = pytest.mark.integration

BIG = b"B" * 50_000
SMALL = 200
FUNCTION = "img-resize"


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Callable[[], Endpoint]]:
    """Start memcached stores of 3 MB (`-M`: a full store refuses, never evicts)."""
    numbers = itertools.count(1)
    with ExitStack() as stores:
        yield lambda: stores.enter_context(
            running_memcached(tmp_path, f"small-store-{next(numbers)}", memory_mb=3)
        )


def fill_for_large(endpoint: Endpoint, small_pages: bool = False) -> int:
    """Fill the store with 50 kB items until memcached refuses one; small items still fit in the
    slab pages already given to them (`small_pages`: first give small items pages in a store
    that has none, e.g. an empty twin). Returns how many fillers it took."""
    store = Store(endpoint)
    if small_pages:
        for n in range(SMALL):
            store.set(f"small-{n:05d}", b"small %d" % n, 1)
        for n in range(SMALL):
            store.delete(f"small-{n:05d}")  # memcached keeps the pages for their slab class
    count = 0
    try:
        while True:
            store.set(f"filler-{count:05d}", BIG, 1)
            count += 1
    except StoreError:
        pass
    store.close()
    assert count > 0
    return count


def mixed_jobs(tag: str) -> list[tuple[str, bytes, str]]:
    """One 50 kB job, then SMALL small ones: (function, payload, unique)."""
    small = [(FUNCTION, b"small %d" % n, f"{tag}-small-{n}") for n in range(SMALL)]
    return [(FUNCTION, BIG, f"{tag}-big"), *small]


def warm_up(gearman: Endpoint) -> None:
    """One small job, so the small jobs' slab class has a page before the store is filled."""
    with GearmanConnection(gearman) as conn:
        conn.submit_background("warm-up", b"small 0", unique="warm-up")


def keys_with(store: Endpoint, text: str) -> set[str]:
    return {item.key for item in Store(store).snapshot() if text in item.key}


def test_client_resends_only_the_refused_job_each_unique_queued_once(
    gearmand: RunningGearmand, small_store: Callable[[], Endpoint], tmp_path: Path
) -> None:
    full = small_store()
    with started_gearmand(full, "g1_", tmp_path) as (refusing, _):
        warm_up(refusing)
        fill_for_large(full)
        jobs = mixed_jobs("client")
        # The Client turns to the second server first: the one whose store is full.
        with Client(servers=[gearmand.endpoint, refusing], retry_timeout=10) as client:
            handles = client.submit_background_many(jobs, window=1000)
        assert all(handles) and len(set(handles)) == len(jobs)
        assert queued(refusing).get(FUNCTION) == SMALL, "the batch went to the full store first"
        assert queued(gearmand.endpoint) == {FUNCTION: 1}
        on_full = keys_with(full, "client-")
        on_other = keys_with(gearmand.store, "client-")
        assert on_full == {f"g1_{FUNCTION}-client-small-{n}" for n in range(SMALL)}
        assert on_other == {f"g1_{FUNCTION}-client-big"}


def store_jobs(store: Endpoint, prefix: str, jobs: list[tuple[str, bytes, str]]) -> None:
    """Write jobs as gearmand persists them (small ones first: their slab class gets a page)."""
    client = Store(store)
    for function, payload, unique in sorted(jobs, key=lambda job: len(job[1])):
        client.set(f"{prefix}{function}-{unique}", payload, 1)
    client.close()


def test_restore_deletes_exactly_the_acknowledged_keys_and_reports_the_refused(
    small_store: Callable[[], Endpoint], tmp_path: Path
) -> None:
    """Restart case: the new gearmand re-persists into the same store, full for large items."""
    full = small_store()
    jobs = mixed_jobs("restart")
    store_jobs(full, "g1_", jobs)
    planted = ["not-a-job", f"g9_{FUNCTION}-{uuid.uuid4()}"]  # no prefix; newer than the live g2_
    for key in planted:
        Store(full).set(key, b"planted", 1)
    fill_for_large(full)
    store = Store(full)
    expected = store.curr_items()
    with started_gearmand(full, "g2_", tmp_path) as (target, _):
        report = restore(store, target, expected=expected, keep_prefix="g2_",
                         known_functions={FUNCTION}, read_timeout=30.0)  # fmt: skip
        assert queued(target) == {FUNCTION: SMALL}
    big = f"g1_{FUNCTION}-restart-big"
    assert report.moved == SMALL
    assert list(report.refused) == [big] and "QUEUE_ERROR" in report.refused[big]
    assert set(planted) <= set(report.skipped)
    assert keys_with(full, "restart-") == {big} | {
        f"g2_{FUNCTION}-restart-small-{n}" for n in range(SMALL)
    }
    store.close()


def test_restore_sends_the_jobs_refused_twice_to_another_gearmand(
    gearmand: RunningGearmand, small_store: Callable[[], Endpoint], tmp_path: Path
) -> None:
    """The same restart with `overflow`: the big job goes to another node's gearmand, once."""
    full = small_store()
    store_jobs(full, "g1_", mixed_jobs("overflow"))
    fill_for_large(full)
    store = Store(full)
    expected = store.curr_items()
    with started_gearmand(full, "g2_", tmp_path) as (target, _):
        report = restore(store, target, expected=expected, keep_prefix="g2_",
                         known_functions={FUNCTION}, read_timeout=30.0,
                         overflow=lambda: [gearmand.endpoint])  # fmt: skip
        assert queued(target) == {FUNCTION: SMALL}
    assert (report.moved, report.overflowed, report.refused) == (SMALL + 1, 1, {})
    assert queued(gearmand.endpoint) == {FUNCTION: 1}
    assert keys_with(gearmand.store, "overflow-") == {f"g1_{FUNCTION}-overflow-big"}
    assert keys_with(full, "overflow-") == {
        f"g2_{FUNCTION}-overflow-small-{n}" for n in range(SMALL)
    }
    store.close()


def test_drain_into_a_full_store_moves_each_job_once_and_leaves_the_refused(
    memcached: Endpoint, small_store: Callable[[], Endpoint], tmp_path: Path
) -> None:
    """Take-over case: a dead node's store drained into a gearmand whose own store is full."""
    jobs = mixed_jobs("drain")
    store_jobs(memcached, "g4_", jobs)
    full = small_store()
    with started_gearmand(full, "g1_", tmp_path) as (target, _):
        warm_up(target)
        fill_for_large(full)
        source = Store(memcached)
        report = restore(source, target, expected=len(jobs), keep_prefix=None,
                         known_functions={FUNCTION}, read_timeout=30.0)  # fmt: skip
        assert queued(target) == {FUNCTION: SMALL, "warm-up": 1}
        # Nothing but the refused job is left in the dead node's store.
        assert report.moved == SMALL and list(report.refused) == [f"g4_{FUNCTION}-drain-big"]
        assert keys_with(memcached, "drain-") == {f"g4_{FUNCTION}-drain-big"}
        assert len(keys_with(full, "drain-small-")) == SMALL
        source.close()


def test_jobs_with_an_empty_unique_restore_as_the_one_gearmand_kept(
    gearmand: RunningGearmand, tmp_path: Path
) -> None:
    with GearmanConnection(gearmand.endpoint) as conn:
        for n in range(10):
            conn.submit_background("report", b"run %d" % n, unique="")
    assert queued(gearmand.endpoint) == {"report": 10}  # in memory; one key in the store
    kill_pid(gearmand.pid)
    store = Store(gearmand.store)
    assert keys_with(gearmand.store, "report") == {"g1_report-"}
    with started_gearmand(gearmand.store, "g2_", tmp_path) as (target, _):
        report = restore(store, target, expected=1, keep_prefix="g2_", known_functions=set())
        assert report.moved == 1 and queued(target) == {"report": 1}
        with GearmanConnection(target) as worker:
            worker.can_do("report")
            job = worker.grab_job_uniq()
        assert job is not None and (job.unique, job.payload) == ("", b"run 9")  # the last one
    assert keys_with(gearmand.store, "report") == {"g2_report-"}
    store.close()


def test_a_worker_registering_many_names_grows_neither_health_checks_nor_zookeeper(
    gearmand: RunningGearmand, zookeeper: Endpoint
) -> None:
    """A worker registers 20k random 180-byte names, making `status` 3.7 MB (100k such names
    pass 16 MB and took gearmand more than 30 s to list): the health check reads at most
    STATUS_NAMES_BYTES of it and says the list is cut, and what is published to ZooKeeper is
    bounded by the rate (the rest counted by reason)."""
    names = [f"{n:06d}-{uuid.uuid4().hex * 5}"[:180] for n in range(20_000)]
    with GearmanConnection(gearmand.endpoint, read_timeout=60) as worker:
        worker.send_many(request(PacketType.CAN_DO, name.encode()) for name in names)
        assert worker.echo(b"registered") == b"registered"
        assert len(names) * len(names[0]) > 3 * STATUS_NAMES_BYTES
        admin = AdminClient(gearmand.endpoint, timeout=5, keep_open=True)  # as the agent's
        check = check_gearmand(gearmand.pid, admin)
        again = check_gearmand(gearmand.pid, admin)  # the cut reply's rest is not read as an answer
        admin.close()
    assert check.health is Health.SERVING and not check.functions_complete
    assert again.health is Health.SERVING and again.functions[:100] == check.functions[:100]
    assert 0 < len(check.functions) < len(names) and set(check.functions) <= set(names)
    with coord.session(str(zookeeper), f"names-{uuid.uuid4().hex[:8]}") as session:
        registry = FunctionRegistry(session)
        left_out = registry.publish(check.functions)
        assert left_out == {"rate": len(check.functions) - PER_MINUTE}
        assert len(session.function_names()) == PER_MINUTE


def test_a_key_that_grows_past_250_bytes_with_the_prefix_is_reported_not_retried_forever(
    memcached: Endpoint, tmp_path: Path
) -> None:
    """`g9_` + a 210-byte name + '-' + a UUID is 250 bytes; under `g10_` it would be 251."""
    function = "f" * (250 - len("g9_") - 1 - 36)
    key = f"g9_{function}-{uuid.uuid4()}"
    assert len(key) == 250
    Store(memcached).set(key, b"payload", 1)
    store = Store(memcached)
    with started_gearmand(memcached, "g10_", tmp_path) as (target, _):
        report = restore(store, target, expected=1, keep_prefix="g10_", known_functions=set())
        assert queued(target) == {}
    assert report.moved == 0 and list(report.refused) == [key]
    assert "passes 250 bytes" in report.refused[key]
    assert Store(memcached).get(key) == (b"payload", 1)
    store.close()


def test_keys_deleted_by_someone_else_after_the_count_are_counted_out_for_the_retry(
    memcached: Endpoint, tmp_path: Path
) -> None:
    """Issue 13: the count said 50, someone deleted 5 keys before the restore: the restore says
    5 were never listed and expects nothing more, instead of failing every retry."""
    store_jobs(memcached, "g1_", [(FUNCTION, b"p", f"recount-{n}") for n in range(50)])
    store = Store(memcached)
    for n in range(5):
        store.delete(f"g1_{FUNCTION}-recount-{n}")
    with started_gearmand(memcached, "g2_", tmp_path) as (target, _):
        with pytest.raises(RestoreIncomplete) as incomplete:
            restore(store, target, expected=50, keep_prefix="g2_", known_functions={FUNCTION})
        report = incomplete.value.report
        assert (report.moved, report.unseen, report.left_in_store) == (45, 5, 0)
        assert queued(target) == {FUNCTION: 45}
    store.close()


def test_a_refusal_that_repeats_is_a_reported_state_not_a_restore_loop(tmp_path: Path) -> None:
    """One node. A big job is acknowledged, then both its twin stores fill up for large items
    and its gearmand dies: the restore cannot put the job's new copy in the other twin, and no
    peer can take it. The node serves; status and metrics say one job is refused; it stays
    stored."""
    with local_cluster(tmp_path / "c", nodes=1) as directory:
        first = node(status_json(directory), "node1")
        endpoint, store = Endpoint.parse(first["gearman"]), Endpoint.parse(first["store"])
        with GearmanConnection(endpoint) as conn:
            conn.submit_background_many([(f, u, p, "normal") for f, p, u in mixed_jobs("agent")])
        fill_for_large(store)
        fill_for_large(Endpoint.parse(first["twin"]), small_pages=True)
        kill_pid(first["gearmand_pid"])
        back = node(wait_status(directory, lambda s: node(s, "node1")["restarts"] == 1
                                and node(s, "node1")["state"] == "serving"), "node1")  # fmt: skip
        assert (back["refused_jobs"], back["queued_jobs"]) == (1, SMALL)
        assert len(keys_with(store, "agent-big")) == 1
        with urllib.request.urlopen(f"http://{back['metrics']}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert 'gearctl_refused_jobs{node="node1"} 1.0' in metrics
        assert 'gearctl_restore_jobs_total{node="node1",result="refused"} 1.0' in metrics


def test_a_job_under_two_prefixes_is_submitted_once_and_both_keys_go(
    memcached: Endpoint, tmp_path: Path
) -> None:
    """A restore interrupted between gearmand's answer and the delete leaves a job under the old
    and the new prefix: the next restore submits it once (workers running meanwhile cannot run
    it twice) and deletes both keys. Empty uniques never coalesce: both of those are jobs."""
    store_jobs(memcached, "g1_", [(FUNCTION, b"p", "twice"), (FUNCTION, b"p", "once")])
    store_jobs(memcached, "g2_", [(FUNCTION, b"p", "twice")])
    for prefix in ("g1_", "g2_"):
        Store(memcached).set(f"{prefix}report-", prefix.encode(), 1)
    store = Store(memcached)
    with started_gearmand(memcached, "g3_", tmp_path) as (target, _):
        # A worker is handed each job once: "twice" was queued once.
        with GearmanConnection(target) as worker:
            worker.can_do(FUNCTION)
            report = restore(store, target, expected=5, keep_prefix="g3_",
                             known_functions={FUNCTION})  # fmt: skip
            assert queued(target) == {FUNCTION: 2, "report": 2}
            taken = [worker.grab_job_uniq(), worker.grab_job_uniq(), worker.grab_job_uniq()]
        assert sorted(job.unique for job in taken if job) == ["once", "twice"]
    assert (report.moved, report.coalesced) == (5, 1)
    assert keys_with(memcached, "twice") == {f"g3_{FUNCTION}-twice"}
    store.close()
