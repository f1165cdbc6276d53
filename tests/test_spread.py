"""Spread drain (issue 18): a store's jobs split into parts by a stable key hash, each drained
into its own gearmand; every job lands exactly once."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.drill.workload import FUNCTIONS, Job, drain
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.jobkey import job_key
from cluster.restore import RestoreReport, restore
from cluster.spread import PartStore, first_part, part_counts, part_of, split_parts
from cluster.store import Store, StoredItem
from tests.conftest import HOST, running_memcached
from tests.test_restore import queued, started_gearmand, stored  # noqa: F401


def test_parts_are_stable_and_even() -> None:
    keys = [job_key("g7_", "img-resize", f"job-{n}") for n in range(100_000)]
    assert part_of("g1_mail-job-1", 7) == zlib.crc32(b"mail-job-1") % 7  # the same on every host
    assert part_of("g2_mail-job-1", 7) == part_of("g1_mail-job-1", 7)  # twins: one part
    for parts in (2, 3, 5):
        counts = part_counts(keys, parts)
        assert sum(counts) == len(keys)
        assert max(counts) <= 1.1 * len(keys) / parts, counts  # within 10% of even
        assert min(counts) >= 0.9 * len(keys) / parts, counts


def test_first_part_is_the_rank_among_the_plans_survivors() -> None:
    assert [first_part(["node3", "node1"], me) for me in ("node1", "node3")] == [0, 1]
    with pytest.raises(GearctlError, match="not one of"):
        first_part(["node1"], "node2")
    with pytest.raises(GearctlError, match="at least one part"):
        part_counts([], 0)
    with pytest.raises(GearctlError, match="does not exist"):
        PartStore(Endpoint(HOST, 1), 2, 2)


def test_a_part_given_the_plans_listing_is_not_listed_again() -> None:
    keys = [job_key("g7_", "img-resize", f"job-{n}") for n in range(100)]
    items = [StoredItem(key, cas, 80) for cas, key in enumerate(keys)]
    parts = split_parts(items, 2)
    assert [len(part) for part in parts] == part_counts(keys, 2)
    assert all(part_of(item.key, 2) == i for i, part in enumerate(parts) for item in part)
    # Port 1: any metadump would fail. The listing comes back in cas order, filtered.
    part = PartStore(Endpoint(HOST, 1), 1, 2, listed=parts[1])
    assert part.snapshot(expected=len(parts[1])) == parts[1]
    assert part.snapshot(lambda i: i.cas < 50, expected=0) == [i for i in parts[1] if i.cas < 50]


@pytest.fixture
def other_store(tmp_path: Path) -> Iterator[Endpoint]:
    """The second survivor's own store."""
    with running_memcached(tmp_path, "other") as endpoint:
        yield endpoint


@pytest.mark.integration
def test_two_survivors_drain_their_parts_in_parallel_each_job_once(
    stored: tuple[Endpoint, list[Job]],  # noqa: F811
    other_store: Endpoint,
    tmp_path: Path,
) -> None:
    source, jobs = stored
    whole = Store(source, timeout=10.0)
    counts = part_counts((item.key for item in whole.snapshot(expected=len(jobs))), 2)
    assert sum(counts) == len(jobs)
    reports: dict[int, RestoreReport] = {}
    with (
        started_gearmand(other_store, "g5_", tmp_path / "a") as (first, _),
        started_gearmand(other_store, "g6_", tmp_path / "b") as (second, _),
    ):
        # Both survivors' gearmands write to `other_store`, never to the store being drained.

        def drain_part(index: int, target: Endpoint) -> None:
            part = PartStore(source, index, 2, timeout=10.0)
            reports[index] = restore(part, target, expected=counts[index], keep_prefix=None,
                                     known_functions=FUNCTIONS)  # fmt: skip

        targets = (first, second)
        threads = [threading.Thread(target=drain_part, args=(i, t)) for i, t in enumerate(targets)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert [reports[i].moved for i in (0, 1)] == counts
        assert [sum(queued(target).values()) for target in targets] == counts
        assert whole.curr_items() == 0
        result = drain(list(targets), FUNCTIONS, len(jobs), timeout=180)
        assert result.duplicates() == 0
        assert set(result.counts) == {job.unique for job in jobs}
