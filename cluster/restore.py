"""Restore: move every job stored under an old key prefix back into a live gearmand, exactly once.

One routine serves both cases of design §4:
- after a restart, the node's own store holds jobs under older incarnation prefixes while the new
  gearmand persists under a fresh one (`keep_prefix`); those old jobs come back here;
- on take-over, a dead peer's store is drained (nothing in it is kept) into a survivor's gearmand.

Keys are split into function and unique by the one rule of cluster.jobkey. A key that rule finds
ambiguous is deferred, not guessed: it stays in the store, and a later restore with more function
names known (a worker registering the function anywhere makes it known) moves it. A key that is
not a job key gearmand could have written (no gearmand prefix, a prefix not older than the live
gearmand's, a character gearmand never writes) is not submitted: it stays and is reported
(`skipped`). A key with an empty unique (`P<function>-`, gearmand's one key per function for jobs
submitted without a unique) is restored as the job it is.

The caller counts the jobs to move while the store is quiescent (no gearmand writes it:
`stats curr_items`), because nothing but this routine removes old-prefix keys. One metadump pass
is not proof (it misses items moving between LRU segments), so passes repeat until every expected
key has been seen. If someone else deleted keys after the count, passes stop finding new ones
(`STALE_PASSES`): the report says how many expected keys were never listed (`unseen`) and counts
them out of `left_in_store`, so a retry expects what the store really listed (a recount), not the
old count forever. Keys are then moved in `cas` order, which is the order they were stored in, so
each priority keeps its FIFO order. A key is deleted only after gearmand acknowledged its job
(JOB_CREATED), so a crash at any point leaves the key for the next restore. A job present under two
prefixes (a crash between the answer and the delete) is submitted once, and its later keys are
deleted once the first copy was acknowledged (`coalesced`): workers that run jobs as they are
queued cannot run it twice. Empty uniques never coalesce (gearmand keeps one such job per
function and prefix: each key is a job of its own).

gearmand answers every submit of a pipeline, in order, and goes on after refusing one (ERROR
QUEUE_ERROR: a store full for large items takes small ones still). Each answer is mapped to its
job: exactly the acknowledged keys are deleted, the refused ones stay. Once the other jobs are
moved (their deletes may have made room), the refused ones are submitted once more; those refused
again go to the other live gearmands the caller names (`overflow`: a restart into a store full for
large items cannot hold a large job's new copy next to its old one). What is still refused is the
report's `refused` (key and gearmand's reason): a result, not a failure to retry in a loop; the
caller reports it (log, metric, node status) and tries again later.

The moving is pipelined, so gearmand is never idle while the store is read or written: keys go in
chunks of `CHUNK`, all submitted in cas order on one gearmand connection by the calling thread,
while one helper thread with a store connection of its own first deletes the previous chunk (whose
jobs gearmand has acknowledged) and then reads, parses and encodes the next chunk. Before a chunk is
submitted, the delete of the chunk two back has finished, so at most two chunks (`BATCH` jobs) are
acknowledged but not yet deleted at any moment: what a crash of the restoring process can leave
queued twice. `should_continue` is asked before each chunk; counts of a chunk go into the report
when the chunk is submitted, and `moved` only once its keys are deleted, so the report is exact
when `restore` returns or raises (it waits for the deletes in flight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.client import Client, NoServerError
from cluster.gearman.protocol import (
    BatchConnectionError,
    BatchSubmitError,
    GearmanConnection,
    Priority,
    encode_background,
)
from cluster.jobkey import (
    MAX_KEY_BYTES,
    AmbiguousKeyError,
    JobKeyError,
    prefix_epoch,
    split_function_unique,
    split_prefix,
)
from cluster.store import Store, StoredItem, encode_key

log = logging.getLogger("gearctl.restore")

BATCH = 2000
"""At most this many jobs are acknowledged by gearmand but not yet deleted from the store at any
moment (a crash can leave them queued twice: the kill-drainer drill's bound)."""
CHUNK = BATCH // 2  # jobs per pipelined submit; two chunks are acknowledged-but-undeleted at most
STALE_PASSES = 40  # metadump passes that find nothing new before the search gives up

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
    refused: dict[str, str] = field(default_factory=dict)  # key -> why gearmand refused it twice
    overflowed: int = 0  # of `moved`: jobs the target refused twice, acknowledged by another
    coalesced: int = 0  # of `moved`: keys of a job already moved from another prefix (deleted)
    unseen: int = 0  # expected keys no metadump pass listed (deleted by someone else, or missed)
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        """Expected jobs neither moved nor accounted for (skipped, deferred, refused)."""
        return (
            self.left_in_store + self.unseen - len(self.skipped) - self.deferred - len(self.refused)
        )

    @property
    def left_in_store(self) -> int:
        """Old keys this restore listed and did not move: what a retry should expect."""
        return self.expected - self.moved - self.vanished - self.unseen


@dataclass
class Copies:
    """The jobs restores have seen, by (function, unique): restores that share one (a node's
    twin stores, one after the other) move a job stored in two of their stores once."""

    first: dict[tuple[str, str], str] = field(default_factory=dict)  # -> its first key
    acknowledged: set[str] = field(default_factory=set)  # keys whose job gearmand acknowledged


def combined(reports: Sequence[RestoreReport]) -> RestoreReport:
    """One report for the restores of several stores (a node's twin stores), one after another."""
    total = RestoreReport(expected=0)
    for report in reports:
        total.expected += report.expected
        total.moved += report.moved
        total.skipped += report.skipped
        total.vanished += report.vanished
        total.deferred += report.deferred
        total.refused.update(report.refused)
        total.overflowed += report.overflowed
        total.coalesced += report.coalesced
        total.unseen += report.unseen
        total.seconds += report.seconds
    return total


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
    overflow: Callable[[], Sequence[Endpoint]] | None = None,
    copies: Copies | None = None,
) -> RestoreReport:
    """Move `expected` jobs from `source` (all keys but `keep_prefix`'s) into gearmand `target`.

    `copies`: shared with the restores of the node's other stores (its twin), so that a job
    stored in both is moved once (its later keys are deleted as `coalesced`).

    `should_continue` is asked before each chunk (a drainer that lost its lease must stop).
    `overflow` gives other live gearmands: jobs `target` refused twice go there, through the
    failover Client (a restart into a store full for large items cannot hold the new copy of a
    large job next to the old one). Returns the report when every listed job was moved or is
    accounted for (skipped, deferred, refused); raises RestoreIncomplete otherwise.
    """
    report = RestoreReport(expected=expected)
    started = time.monotonic()
    try:
        items = source.snapshot(
            lambda item: keep_prefix is None or not item.key.startswith(keep_prefix),
            expected=expected,
            stale_passes=STALE_PASSES,
        )
        report.unseen = max(0, expected - len(items))
        if report.unseen:
            log.warning("%d of %d expected keys were not listed after %d metadump passes without "
                        "a new key: deleted by someone else since the count, or not listed; a "
                        "retry expects only the %d listed", report.unseen, expected,
                        STALE_PASSES, len(items))  # fmt: skip
        if items:
            reader = _KeyReader(known_functions, keep_prefix)
            mover = _Mover(source, report, reader, started, copies or Copies())
            try:
                mover.run(target, items, read_timeout, progress, should_continue)
                if report.refused and should_continue():
                    mover.retry_refused(target, items, read_timeout)
                if report.refused and overflow is not None and should_continue():
                    mover.overflow(overflow(), items, read_timeout)
            finally:
                mover.store.close()
    except RestoreIncomplete:
        raise
    except GearctlError as exc:
        raise RestoreIncomplete(f"restore interrupted after {report.moved} jobs: {exc}",
                                report) from exc  # fmt: skip
    report.seconds = time.monotonic() - started
    if report.refused:
        log.error("gearmand refused %d jobs twice; they stay in the store: %s",
                  len(report.refused), _reasons(report.refused))  # fmt: skip
    if report.remaining > 0:
        raise RestoreIncomplete(
            f"restore found {expected - report.remaining} of {expected} jobs; "
            f"{report.remaining} are still in the store",
            report,
        )
    return report


def _reasons(refused: dict[str, str]) -> str:
    """The distinct reasons of refusals, each with a count and one example key."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in refused.items():
        by_reason.setdefault(reason, []).append(key)
    return "; ".join(f"{len(keys)} x {reason} (e.g. {keys[0]!r})" for reason, keys in
                     by_reason.items())  # fmt: skip


@dataclass
class _Chunk:
    """One chunk read from the store and parsed, ready to submit."""

    jobs: list[Job] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the store key of each job, in order
    packets: list[bytes] = field(default_factory=list)  # the jobs' submits, encoded
    vanished: int = 0
    skipped: list[str] = field(default_factory=list)
    deferred: int = 0
    copies: list[tuple[str, str]] = field(default_factory=list)  # (key, key of the first copy)


class _KeyReader:
    """Turns a stored key and its value into a job, by cluster.jobkey's split rule."""

    def __init__(self, known_functions: Collection[str], keep_prefix: str | None) -> None:
        self.known = frozenset(known_functions)
        self.keep_prefix = keep_prefix
        self.live_epoch = _epoch_or_none(keep_prefix)
        self.older: dict[str, bool] = {}  # prefix -> older than the live gearmand's (or unknown)

    def job(self, key: str, payload: bytes, flags: int, chunk: _Chunk) -> Job | None:
        """The job stored under `key`; None (counted in `chunk`) to skip or defer it."""
        try:
            parts = split_prefix(key)
            if parts is None:
                raise JobKeyError("no gearmand prefix (g<epoch>_ or gear_)")
            prefix, rest = parts
            if prefix not in self.older:
                epoch = prefix_epoch(prefix)
                live = self.live_epoch
                self.older[prefix] = live is None or epoch is None or epoch < live
            if not self.older[prefix]:
                raise JobKeyError(f"prefix {prefix} is not older than the live {self.keep_prefix}")
            function, unique, _ = split_function_unique(rest, self.known)
        except AmbiguousKeyError:
            chunk.deferred += 1
            return None
        except JobKeyError as exc:
            if not chunk.skipped:  # one line per chunk: a planted flood must not flood the log
                log.warning("not restoring key %r: it is not a job key gearmand wrote: %s", key,
                            exc)  # fmt: skip
            chunk.skipped.append(key)
            return None
        try:
            priority = Priority.from_flags(flags).value
        except ValueError:
            log.warning("key %r has flags %d, not a gearmand priority; restoring as normal", key,
                        flags)  # fmt: skip
            priority = Priority.NORMAL.value
        return function, unique, payload, priority

    def refusal(self, key: str, code: str, text: str) -> str:
        """Why gearmand refused the job of `key`, with the likely cause when it is known."""
        reason = code if text in ("", code) else f"{code} {text}"
        if self.keep_prefix is None:
            return reason
        _, rest = split_prefix(key) or ("", key)
        if len(encode_key(self.keep_prefix + rest)) > MAX_KEY_BYTES:
            return f"{reason} (its key under {self.keep_prefix} passes {MAX_KEY_BYTES} bytes)"
        return reason


def _epoch_or_none(prefix: str | None) -> int | None:
    try:
        return None if prefix is None else prefix_epoch(prefix)
    except JobKeyError:
        return None


class _Mover:
    """Submit chunks on one gearmand connection while a helper thread reads and deletes."""

    def __init__(self, source: Store, report: RestoreReport, reader: _KeyReader,
                 started: float, copies: Copies) -> None:  # fmt: skip
        self.report = report
        self.reader = reader
        self.started = started
        # Store is not thread-safe: the helper thread gets its own (raw sockets per call).
        self.store = Store(source.endpoint, timeout=source.timeout)
        self.deletes: list[Future[int]] = []  # deletes not yet counted in report.moved, in order
        # (function, unique) -> first key (helper thread); acknowledged keys (calling thread)
        self.first, self.acknowledged = copies.first, copies.acknowledged

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
                    if chunk.jobs or chunk.copies:
                        acknowledged, broken = self._submit(gearman, chunk)
                        acknowledged += self._settle_copies(chunk, acknowledged)
                        self.deletes.append(pool.submit(self._delete, acknowledged))
                        if broken is not None:
                            raise broken
                    report.seconds = time.monotonic() - self.started
                    if progress is not None:
                        progress(report)
            self._finish_deletes(0)
        finally:
            if ready is not None:
                ready.cancel()
            self._finish_deletes(0, quiet=True)  # after a failure: count what was deleted
            pool.shutdown(wait=True, cancel_futures=True)

    def retry_refused(self, target: Endpoint, items: list[StoredItem], read_timeout: float) -> None:
        """Submit the refused jobs once more, now that the others are moved and deleted."""
        refused = self.report.refused
        again = [item for item in items if item.key in refused]
        log.warning("gearmand refused %d jobs; submitting them once more: %s", len(again),
                    _reasons(refused))  # fmt: skip
        refused.clear()
        self.run(target, again, read_timeout, None, lambda: True)

    def overflow(self, servers: Sequence[Endpoint], items: list[StoredItem],
                 read_timeout: float) -> None:  # fmt: skip
        """Submit the jobs refused twice to other gearmands; delete exactly the acknowledged."""
        refused = self.report.refused
        if not servers:
            log.warning("no other live gearmand takes the %d refused jobs", len(refused))
            return
        chunk = self._read([item for item in items if item.key in refused])
        self.report.vanished += chunk.vanished
        for key in set(refused) - set(chunk.keys) - {key for key, _ in chunk.copies}:
            del refused[key]  # gone meanwhile: counted as vanished
        with Client(servers=list(servers), read_timeout=read_timeout,
                    retry_timeout=read_timeout) as client:  # fmt: skip
            try:
                handles: list[bytes | None] = list(client.submit_background_many(
                    [(function, payload, unique, priority)
                     for function, unique, payload, priority in chunk.jobs]))  # fmt: skip
            except NoServerError as exc:
                handles = exc.handles
        moved = [key for key, handle in zip(chunk.keys, handles, strict=True) if handle]
        moved += self._settle_copies(chunk, moved)
        self.report.moved += self._delete(moved)
        self.report.overflowed += len(moved)
        for key in moved:
            refused.pop(key, None)
        log.warning("%d jobs refused twice went to other gearmands (%s); %d still refused",
                    len(moved), ", ".join(map(str, servers)), len(refused))  # fmt: skip

    def _submit(
        self, gearman: GearmanConnection, chunk: _Chunk
    ) -> tuple[list[str], BatchConnectionError | None]:
        """Submit a chunk's jobs: the keys gearmand acknowledged (refused ones are recorded),
        and the connection's failure if it broke (its unanswered jobs may have been queued:
        their keys stay, and a retry's copy coalesces by unique or runs twice, within BATCH)."""
        broken: BatchConnectionError | None = None
        try:
            if chunk.packets:
                gearman.submit_packets(chunk.packets)
            return chunk.keys, None
        except BatchSubmitError as exc:
            refusals, handles = exc.refusals, exc.handles
        except BatchConnectionError as exc:
            refusals, handles, broken = exc.refusals, exc.handles, exc
        for index, code, text in refusals:
            key = chunk.keys[index]
            self.report.refused[key] = self.reader.refusal(key, code, text)
        return [key for key, handle in zip(chunk.keys, handles, strict=False) if handle], broken

    def _read(self, items: list[StoredItem]) -> _Chunk:
        """Helper thread: read, parse and encode one chunk (a key gone meanwhile: vanished)."""
        values = self.store.get_many([item.key for item in items])
        chunk = _Chunk()
        job_of = self.reader.job
        for item in items:
            key = item.key
            stored = values.get(key)
            if stored is None:
                chunk.vanished += 1
                continue
            job = job_of(key, stored[0], stored[1], chunk)
            if job is None:
                continue
            if job[1]:  # an empty unique never coalesces: each such key is a job of its own
                first = self.first.setdefault((job[0], job[1]), key)
                if first != key:
                    chunk.copies.append((key, first))
                    continue
            chunk.jobs.append(job)
            chunk.keys.append(key)
        # encoded here, so the submitting thread only sends and reads answers
        chunk.packets = encode_background(((f, p, u, pr) for f, u, p, pr in chunk.jobs), iter(()))
        return chunk

    def _settle_copies(self, chunk: _Chunk, acknowledged: list[str]) -> list[str]:
        """A job stored under two prefixes (a restore interrupted between gearmand's answer and
        the delete) is submitted once: the keys of its later copies, to delete once its first
        copy was acknowledged. A copy of a job that was not is recorded as refused with it."""
        self.acknowledged.update(acknowledged)
        copies = [key for key, first in chunk.copies if first in self.acknowledged]
        for key, first in chunk.copies:
            if first not in self.acknowledged:
                self.report.refused[key] = f"a copy of {first!r}, which was not moved"
        self.report.coalesced += len(copies)
        return copies

    def _delete(self, keys: list[str]) -> int:
        """Helper thread: delete keys whose jobs gearmand acknowledged."""
        self.store.delete_many(keys)
        return len(keys)

    def _count(self, chunk: _Chunk) -> None:
        report = self.report
        report.vanished += chunk.vanished
        report.skipped.extend(chunk.skipped)
        report.deferred += chunk.deferred
        if len(chunk.skipped) > 1:
            log.warning("%d keys of this chunk are not job keys gearmand wrote; they stay in the "
                        "store", len(chunk.skipped))  # fmt: skip
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
