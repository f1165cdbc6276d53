"""The bound on published function names: size, count, total bytes and rate, by reason."""

from __future__ import annotations

from cluster.namebound import MAX_NAME_BYTES, NameBound, znode_name


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_names_within_every_bound_are_published() -> None:
    admitted, left_out = NameBound().admit({"mail", "img-resize"}, set())
    assert admitted == ["img-resize", "mail"] and not left_out


def test_a_name_no_job_key_can_hold_is_left_out_for_size() -> None:
    long = "f" * (MAX_NAME_BYTES + 1)
    admitted, left_out = NameBound().admit({long, "f" * MAX_NAME_BYTES}, set())
    assert admitted == ["f" * MAX_NAME_BYTES] and left_out == {"size": 1}


def test_count_and_total_bytes_bound_what_zookeeper_holds() -> None:
    bound = NameBound(max_names=3, max_total_bytes=1000)
    admitted, left_out = bound.admit({"d", "e"}, {"a", "b"})
    assert admitted == ["d"] and left_out == {"count": 1}
    by_bytes = NameBound(max_total_bytes=len(znode_name("a/b")) + 1)
    admitted, left_out = by_bytes.admit({"a/b", "cd", "e"}, set())  # "a%2Fb" is 5 bytes quoted
    assert admitted == ["a/b", "e"] and left_out == {"count": 1}


def test_a_burst_of_new_names_is_rate_limited_and_offered_again_later() -> None:
    clock = Clock()
    bound = NameBound(per_minute=60, clock=clock)
    burst = {f"random-{n:05d}" for n in range(100_000)}
    admitted, left_out = bound.admit(burst, set())
    assert len(admitted) == 60 and left_out == {"rate": 100_000 - 60}
    clock.now += 10  # ten seconds: ten more tokens
    again, left_out = bound.admit(burst - set(admitted), set(admitted))
    assert len(again) == 10 and left_out["rate"] == 100_000 - 70
    clock.now += 3600  # the bucket holds at most one minute's worth
    assert len(bound.admit(burst - set(admitted) - set(again), set())[0]) == 60
