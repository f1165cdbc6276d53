"""Pure logic of the launchers: tuned gearmand flags, addresses, member records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.coord import MemberRecord
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", Endpoint("h", 1)), ("10.0.0.1:4730", Endpoint("10.0.0.1", 4730)), ("h", None)],
)
def test_endpoint_parse(text: str, expected: Endpoint | None) -> None:
    if expected is None:
        assert Endpoint.parse(text, default_port=7) == Endpoint("h", 7)
        with pytest.raises(ConfigError, match="no port"):
            Endpoint.parse(text)
    else:
        assert Endpoint.parse(text) == expected


@given(st.text(max_size=30))
def test_endpoint_parse_never_fails_unexpectedly(text: str) -> None:
    try:
        endpoint = Endpoint.parse(text)
    except ConfigError:
        return
    assert 0 < endpoint.port < 65536


def test_member_record_round_trip_ignores_unknown_keys() -> None:
    record = MemberRecord("n1", "h:1", "h:2", 10, 11, "serving", restarts=2)
    assert MemberRecord.decode(record.encode()) == record
    newer = record.encode().replace(b'"node"', b'"future": 1, "node"')
    assert MemberRecord.decode(newer) == record
