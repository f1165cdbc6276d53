"""Pure logic of the gearmand launcher: its tuned flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.gearmand_server import _is_prime, hashtable_buckets, io_threads


@given(st.integers(min_value=1, max_value=5_000_000))
def test_buckets_are_a_prime_at_least_the_expected_depth(depth: int) -> None:
    buckets = hashtable_buckets(depth)
    assert buckets >= max(991, depth)
    assert _is_prime(buckets)


def test_buckets_for_the_default_depth() -> None:
    assert hashtable_buckets(200_000) == 200003


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 2), (16, 8)])
def test_io_threads_are_half_the_cores(cores: int, threads: int) -> None:
    assert io_threads(cores) == threads
