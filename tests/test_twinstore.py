"""The twin-store rule (pure logic): which twin a new gearmand gets, what its restore reads, in
which order a take-over drains a dead node's twins."""

from __future__ import annotations

import pytest

from cluster.claim import drain_order
from cluster.coord import StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.store import StoreIdentity
from cluster.twinstore import came_back_restarted, plan_start, to_drain

A = Endpoint("10.0.0.1", 11211)
B = Endpoint("10.0.0.1", 11212)


def test_gearmand_gets_the_empty_twin_and_the_restore_reads_the_full_one() -> None:
    start = plan_start((A, B), (100_000, 0))
    assert (start.serve, start.restore_from, start.expected, start.walk) == (B, (A,), 100_000, 0)
    start = plan_start((A, B), (0, 7))
    assert (start.serve, start.restore_from, start.expected, start.walk) == (A, (B,), 7, 0)


def test_both_empty_keeps_the_first_twin() -> None:
    start = plan_start((A, B), (0, 0))
    assert (start.serve, start.restore_from, start.expected) == (A, (), 0)


def test_after_a_crash_mid_restore_the_smaller_twin_serves_and_both_are_restored() -> None:
    start = plan_start((A, B), (60_000, 40_000))
    assert start.serve == B
    assert start.restore_from == (A, B)  # the other twin first
    assert (start.expected, start.walk) == (100_000, 40_000)


def test_a_single_store_serves_every_start_and_is_restored_from() -> None:
    start = plan_start((A,), (5,))
    assert (start.serve, start.restore_from, start.expected, start.walk) == (A, (A,), 5, 5)
    assert plan_start((A,), (0,)).restore_from == ()


def test_bad_input_is_refused() -> None:
    with pytest.raises(GearctlError, match="two memcached instances"):
        plan_start((A, A), (0, 0))
    with pytest.raises(GearctlError, match="negative"):
        plan_start((A, B), (-1, 0))
    with pytest.raises(GearctlError, match="one or two stores"):
        plan_start((A, B), (1,))


def test_a_silent_twin_is_pending_and_the_answering_one_serves_and_is_restored() -> None:
    start = plan_start((A, B), (None, 0))
    assert (start.serve, start.restore_from, start.expected, start.pending) == (B, (), 0, A)
    start = plan_start((A, B), (30, None))  # it walks its own 30 items: the only store left
    assert (start.serve, start.restore_from, start.walk, start.pending) == (A, (A,), 30, B)
    assert plan_start((A, B), (0, 5)).pending is None
    with pytest.raises(GearctlError, match="no store answers"):
        plan_start((A, B), (None, None))
    with pytest.raises(GearctlError, match="no store answers"):
        plan_start((A,), (None,))


def test_a_twin_back_after_a_silence_restarted_if_another_memcached_or_started_since() -> None:
    seen = StoreIdentity(pid=10, started=1000.0)
    assert not came_back_restarted(StoreIdentity(10, 1000.0), seen, silent_since=5000.0)
    assert came_back_restarted(StoreIdentity(11, 1000.0), seen, silent_since=5000.0)
    assert came_back_restarted(StoreIdentity(10, 4000.0), seen, silent_since=5000.0)
    # never seen before the silence: only a start after it began tells
    assert not came_back_restarted(StoreIdentity(10, 1000.0), None, silent_since=5000.0)
    assert not came_back_restarted(StoreIdentity(10, 5001.0), None, silent_since=5000.0)
    assert came_back_restarted(StoreIdentity(10, 5010.0), None, silent_since=5000.0)


def test_the_twin_is_drained_first_then_the_store_the_dead_gearmand_wrote() -> None:
    record = StoreRecord("h:1", "h:2", "h", None, twin="h:3")
    assert drain_order(record) == ("h:3", "h:1")
    assert drain_order(StoreRecord("h:1", "h:2", "h", None)) == ("h:1",)


def test_a_spread_plan_keeps_its_stores_and_a_twin_it_left_out_is_pending() -> None:
    assert to_drain(("h:3", "h:1"), ("h:1",)) == (("h:1",), "h:3")
    assert to_drain(("h:3", "h:1"), ("h:3", "h:1")) == (("h:3", "h:1"), None)
    assert to_drain(("h:1",), None) == (("h:1",), None)  # one store: asked nothing
