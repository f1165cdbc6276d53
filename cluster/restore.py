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

The moving is pipelined, so gearmand is never idle while the store is read or written: keys go in
chunks of `CHUNK`, all submitted in cas order on one gearmand connection by the calling thread,
while one helper thread with a store connection of its own first deletes the previous chunk (whose
jobs gearmand has acknowledged) and then reads and parses the next chunk. Before a chunk is
submitted, the delete of the chunk two back has finished, so at most two chunks (`BATCH` jobs) are
acknowledged but not yet deleted at any moment: what a crash of the restoring process can leave
queued twice. `should_continue` is asked before each chunk; counts of a chunk go into the report
when the chunk is submitted, and `moved` only once its keys are deleted, so the report is exact
when `restore` returns or raises (it waits for the deletes in flight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.protocol import BatchSubmitError, GearmanConnection, Priority
from cluster.jobkey import JobKeyError, SplitMethod, parse_job_key, split_prefix
from cluster.store import Store, StoredItem

log = logging.getLogger("gearctl.restore")

BATCH = 2000
"""At most this many jobs are acknowledged by gearmand but not yet deleted from the store at any
moment (a crash can leave them queued twice: the kill-drainer drill's bound)."""
CHUNK = BATCH // 2  # jobs per pipelined submit; two chunks are acknowledged-but-undeleted at most
STALE_PASSES = 40  # metadump passes that find nothing new before the search gives up
_PRIORITIES = {priority.flags: priority.value for priority in Priority}

Job = tuple[str, str, bytes, str]  # function, unique, payload, priority


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

    `should_continue` is asked before each chunk (a drainer that lost its lease must stop).
    """
    report = RestoreReport(expected=expected)
    started = time.monotonic()
    try:
        items = source.snapshot(
            lambda item: keep_prefix is None or not item.key.startswith(keep_prefix),
            expected=expected,
            stale_passes=STALE_PASSES,
        )
        if items:
            mover = _Mover(source, report, _KeyParser(known_functions), started)
            mover.run(target, items, read_timeout, progress, should_continue)
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


@dataclass
class _Chunk:
    """One chunk read from the store and parsed, ready to submit."""

    jobs: list[Job] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the store key of each job, in order
    vanished: int = 0
    skipped: list[str] = field(default_factory=list)
    deferred: int = 0


class _KeyParser:
    """`parse_job_key` for the restore: a fast path for keys a known function name splits."""

    def __init__(self, known_functions: Collection[str]) -> None:
        self.known = frozenset(known_functions)

    def split(self, key: str, chunk: _Chunk) -> tuple[str, str] | None:
        """(function, unique) of `key`; None (counted in `chunk`) to skip or defer it."""
        parts = split_prefix(key)
        if parts is not None:
            # The longest known function first, as parse_job_key does: the last '-' that leaves
            # both parts non-empty, then the ones before it.
            rest = parts[1]
            cut = rest.rfind("-", 1, len(rest) - 1)
            while cut > 0:
                if rest[:cut] in self.known:
                    return rest[:cut], rest[cut + 1 :]
                cut = rest.rfind("-", 1, cut)
        try:
            parsed = parse_job_key(key, self.known)
        except JobKeyError as exc:
            log.warning("skipping key %r: %s", key, exc)
            chunk.skipped.append(key)
            return None
        if parsed.method == SplitMethod.FIRST_DASH and "-" in parsed.function + parsed.unique:
            # A guess would queue the job under a function no worker may serve (img-resize as
            # `img`): leave it in the store until a worker or a status shows the true name.
            chunk.deferred += 1
            return None
        return parsed.function, parsed.unique


class _Mover:
    """Submit chunks on one gearmand connection while a helper thread reads and deletes."""

    def __init__(self, source: Store, report: RestoreReport, parser: _KeyParser,
                 started: float) -> None:  # fmt: skip
        self.report = report
        self.parser = parser
        self.started = started
        # Store is not thread-safe: the helper thread gets its own (raw sockets per call).
        self.store = Store(source.endpoint, timeout=source.timeout)
        self.deletes: list[Future[int]] = []  # deletes not yet counted in report.moved, in order

    def run(
        self,
        target: Endpoint,
        items: list[StoredItem],
        read_timeout: float,
        progress: Progress | None,
        should_continue: Callable[[], bool],
    ) -> None:
        report = self.report
        chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gearctl-restore")
        ready: Future[_Chunk] | None = None
        try:
            with GearmanConnection(target, read_timeout=read_timeout) as gearman:
                ready = pool.submit(self._read, chunks[0])
                for index in range(len(chunks)):
                    if not should_continue():
                        self._finish_deletes(0)
                        raise RestoreIncomplete(
                            f"restore stopped after {report.moved} of {report.expected} jobs",
                            report,
                        )
                    chunk = ready.result()
                    # Only the previous chunk's delete may still run while this chunk is in
                    # flight: at most BATCH jobs are acknowledged and not deleted.
                    self._finish_deletes(1)
                    if index + 1 < len(chunks):
                        ready = pool.submit(self._read, chunks[index + 1])
                    self._count(chunk)
                    if chunk.jobs:
                        try:
                            gearman.submit_background_many(chunk.jobs)
                        except BatchSubmitError as exc:
                            # Delete exactly what gearmand acknowledged; the rest stays.
                            ready.cancel()
                            acknowledged = chunk.keys[: exc.acknowledged]
                            self.deletes.append(pool.submit(self._delete, acknowledged))
                            raise
                        self.deletes.append(pool.submit(self._delete, chunk.keys))
                    report.seconds = time.monotonic() - self.started
                    if progress is not None:
                        progress(report)
            self._finish_deletes(0)
        finally:
            if ready is not None:
                ready.cancel()
            self._finish_deletes(0, quiet=True)  # after a failure: count what was deleted
            pool.shutdown(wait=True, cancel_futures=True)
            self.store.close()

    def _read(self, items: list[StoredItem]) -> _Chunk:
        """Helper thread: read and parse one chunk (a key gone meanwhile counts as vanished)."""
        values = self.store.get_many([item.key for item in items])
        chunk = _Chunk()
        split = self.parser.split
        for item in items:
            key = item.key
            stored = values.get(key)
            if stored is None:
                chunk.vanished += 1
                continue
            parts = split(key, chunk)
            if parts is None:
                continue
            payload, flags = stored
            priority = _PRIORITIES.get(flags) or _priority(key, flags)
            chunk.jobs.append((parts[0], parts[1], payload, priority))
            chunk.keys.append(key)
        return chunk

    def _delete(self, keys: list[str]) -> int:
        """Helper thread: delete keys whose jobs gearmand acknowledged."""
        self.store.delete_many(keys)
        return len(keys)

    def _count(self, chunk: _Chunk) -> None:
        report = self.report
        report.vanished += chunk.vanished
        report.skipped.extend(chunk.skipped)
        report.deferred += chunk.deferred
        if chunk.deferred:
            log.warning(
                "%d jobs wait in the store: their keys split into function and unique in several "
                "ways and no function name seen so far decides it",
                chunk.deferred,
            )

    def _finish_deletes(self, pending: int, *, quiet: bool = False) -> None:
        """Wait until at most `pending` deletes are in flight, counting the finished ones as moved.

        A failed delete raises (its keys stay in the store and are not counted), unless `quiet`:
        then it is logged, because another error is already on its way up.
        """
        while len(self.deletes) > pending:
            future = self.deletes.pop(0)
            try:
                self.report.moved += future.result()
            except GearctlError as exc:
                if not quiet:
                    raise  # the deletes still in flight are counted by run()'s `finally`
                log.error("deleting moved keys failed; they stay in the store: %s", exc)


def _priority(key: str, flags: int) -> str:
    try:
        return Priority.from_flags(flags).value
    except ValueError:
        log.warning("key %r has flags %d, not a gearmand priority; restoring as normal", key, flags)
        return Priority.NORMAL.value
