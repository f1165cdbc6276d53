"""The drills' foreground ledger (pure logic): a second run of a job whose submit failed over
is a re-run (at least once, the Client's contract); any other second run is a duplicate."""

from __future__ import annotations

from collections import Counter

from cluster.drill.workload import ForegroundLedger

SUBMITTED = {"fg0-0", "fg0-1", "fg1-0", "fg1-1"}


def ledger(executions: Counter[str], failovers: Counter[str]) -> ForegroundLedger:
    return ForegroundLedger.count(SUBMITTED, set(SUBMITTED), [], 0, executions, failovers)


def test_a_job_run_again_after_its_submit_failed_over_is_a_rerun() -> None:
    fg = ledger(Counter({"fg0-0": 2, "fg0-1": 1, "fg1-0": 1, "fg1-1": 1}), Counter({"fg0-0": 1}))
    assert (fg.executed, fg.duplicated, fg.reruns, fg.failovers) == (5, 0, 1, 1)


def test_a_job_run_twice_with_no_failover_is_a_duplicate() -> None:
    fg = ledger(Counter({"fg0-0": 1, "fg0-1": 2, "fg1-0": 1, "fg1-1": 1}), Counter({"fg0-0": 1}))
    assert (fg.duplicated, fg.reruns) == (1, 0)


def test_at_most_one_rerun_per_failover() -> None:
    fg = ledger(Counter({"fg0-0": 3, "fg0-1": 1, "fg1-0": 3, "fg1-1": 1}),
                Counter({"fg0-0": 1, "fg1-0": 2}))  # fmt: skip
    assert (fg.duplicated, fg.reruns, fg.failovers) == (1, 3, 3)


def test_a_failover_before_the_job_ran_anywhere_admits_nothing() -> None:
    """Connection refused, then run once elsewhere: no second run to explain."""
    fg = ledger(Counter(dict.fromkeys(SUBMITTED, 1)), Counter({"fg1-1": 2}))
    assert (fg.duplicated, fg.reruns, fg.failovers) == (0, 0, 2)


def test_lost_failed_wrong_and_unexpected_are_counted_as_before() -> None:
    fg = ForegroundLedger.count(
        SUBMITTED, {"fg0-0"}, ["fg0-1"], 1, Counter({"fg0-0": 1, "fg0-1": 1, "other": 1}),
        Counter(),
    )  # fmt: skip
    assert (fg.attempted, fg.acknowledged, fg.lost, fg.failed, fg.unexpected) == (4, 1, 1, 1, 2)
