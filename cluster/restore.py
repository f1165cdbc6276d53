"""Restore: move every job stored under an old key prefix back into a live gearmand, exactly once.

One routine serves both cases of design §4:
- after a restart, the node's own store holds jobs under older incarnation prefixes while the new
  gearmand persists under a fresh one (`keep_prefix`); those old jobs come back here;
- on take-over, a dead peer's store is drained (nothing in it is kept) into a survivor's gearmand.

A key whose function/unique split stays ambiguous (no known function name decides it and the
unique is no UUID) is deferred, not guessed: it stays in the store, and a later restore with more
function names known (a worker registering the function anywhere makes it known) moves it.

The caller counts the jobs to move while the store is quiescent (no gearmand writes it:
`stats curr_items`), because nothing but this routine removes old-prefix keys. One metadump pass
is not proof (it misses items moving between LRU segments), so passes repeat until every expected
key has been seen. Keys are then moved in `cas` order, which is the order they were stored in, so
each priority keeps its FIFO order. A key is deleted only after gearmand acknowledged its job
(JOB_CREATED), so a crash at any point leaves the key for the next restore; a job present under two
prefixes is coalesced by gearmand's unique while queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.jobkey import JobKey, JobKeyError, SplitMethod, parse_job_key
from cluster.protocol import BatchSubmitError, GearmanConnection, Priority
from cluster.store import Store, StoredItem

log = logging.getLogger("gearctl.restore")

BATCH = 2000
STALE_PASSES = 40  # metadump passes that find nothing new before the search gives up


class RestoreIncomplete(GearctlError):
    """Some expected jobs were not found or could not be moved; the report says how many."""

    def __init__(self, message: str, report: RestoreReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class RestoreReport:
    expected: int
    moved: int = 0
    skipped: list[str] = field(default_factory=list)  # keys that are not gearmand jobs
    vanished: int = 0  # keys that disappeared between listing and reading
    deferred: int = 0  # ambiguous keys left in the store until their function name is known
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        """Expected jobs neither moved nor accounted for (skipped, vanished)."""
        return self.left_in_store - len(self.skipped) - self.deferred

    @property
    def left_in_store(self) -> int:
        """Old keys still in the store: what a retry of the restore should expect."""
        return self.expected - self.moved - self.vanished


Progress = Callable[[RestoreReport], None]


def restore(
    source: Store,
    target: Endpoint,
    *,
    expected: int,
    keep_prefix: str | None,
    known_functions: Collection[str],
    progress: Progress | None = None,
    should_continue: Callable[[], bool] = lambda: True,
    read_timeout: float = 10.0,
) -> RestoreReport:
    """Move `expected` jobs from `source` (all keys but `keep_prefix`'s) into gearmand `target`.

    `should_continue` is asked before each batch (a drainer that lost its lease must stop).
    """
    report = RestoreReport(expected=expected)
    started = time.monotonic()
    try:
        items = source.snapshot(
            lambda item: keep_prefix is None or not item.key.startswith(keep_prefix),
            expected=expected,
            stale_passes=STALE_PASSES,
        )
        with GearmanConnection(target, read_timeout=read_timeout) as gearman:
            for start in range(0, len(items), BATCH):
                if not should_continue():
                    raise RestoreIncomplete(
                        f"restore stopped after {report.moved} of {expected} jobs", report
                    )
                _move_batch(source, gearman, items[start : start + BATCH], known_functions,
                            report)  # fmt: skip
                report.seconds = time.monotonic() - started
                if progress is not None:
                    progress(report)
    except RestoreIncomplete:
        raise
    except GearctlError as exc:
        raise RestoreIncomplete(f"restore interrupted after {report.moved} jobs: {exc}",
                                report) from exc  # fmt: skip
    report.seconds = time.monotonic() - started
    if report.remaining > 0:
        raise RestoreIncomplete(
            f"restore found {expected - report.remaining} of {expected} jobs; "
            f"{report.remaining} are still in the store",
            report,
        )
    return report


def _move_batch(
    source: Store,
    gearman: GearmanConnection,
    items: list[StoredItem],
    known_functions: Collection[str],
    report: RestoreReport,
) -> None:
    values = source.get_many([item.key for item in items])
    deferred_before = report.deferred
    jobs: list[tuple[str, str, bytes, str]] = []
    keys: list[str] = []
    for item in items:
        stored = values.get(item.key)
        if stored is None:
            report.vanished += 1
            continue
        parsed = _parse(item.key, known_functions, report)
        if parsed is None:
            continue
        payload, flags = stored
        jobs.append((parsed.function, parsed.unique, payload, _priority(item.key, flags)))
        keys.append(item.key)
    if deferred := report.deferred - deferred_before:
        log.warning(
            "%d jobs wait in the store: their keys split into function and unique in several "
            "ways and no function name seen so far decides it",
            deferred,
        )
    if not jobs:
        return
    try:
        gearman.submit_background_many(jobs)
    except BatchSubmitError as exc:
        # Delete exactly what gearmand acknowledged; the rest stays for the next attempt.
        source.delete_many(keys[: exc.acknowledged])
        report.moved += exc.acknowledged
        raise
    source.delete_many(keys)
    report.moved += len(jobs)


def _priority(key: str, flags: int) -> str:
    try:
        return Priority.from_flags(flags).value
    except ValueError:
        log.warning("key %r has flags %d, not a gearmand priority; restoring as normal", key, flags)
        return Priority.NORMAL.value


def _parse(key: str, known_functions: Collection[str], report: RestoreReport) -> JobKey | None:
    try:
        parsed = parse_job_key(key, known_functions)
    except JobKeyError as exc:
        log.warning("skipping key %r: %s", key, exc)
        report.skipped.append(key)
        return None
    if parsed.method == SplitMethod.FIRST_DASH and "-" in parsed.function + parsed.unique:
        # A guess would queue the job under a function no worker may serve (img-resize as
        # `img`): leave it in the store until a worker or a status shows the true name.
        report.deferred += 1
        return None
    return parsed
