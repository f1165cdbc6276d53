"""Spread a dead node's store over every live survivor (issue 18): parts by a stable key hash.

A job belongs to part `part_of(key, parts)` (CRC-32 of its memcached key): the same key lands in
the same part on every survivor and in every retry, so parts never overlap and every job is in
exactly one. Each part is drained by whoever holds that part's lease, with the ordinary restore
routine reading the store through `PartStore`, which lists only the part's keys (reads and
deletes go by key, so they stay inside the part). FIFO order holds within a part, not across
parts: the price of several gearmands re-persisting in parallel.

How the parts are coordinated (cluster/spreaddrain.py, behind `[takeover] spread`; see
docs/architecture.md, "Spread drain"): the survivor that claims the store as today (owner znode,
fence check) counts it while it is quiescent, splits the count with `part_counts`, publishes the
plan, and keeps the store's lease until every part is done; each survivor drains the part its
rank names (`first_part`) under that part's own lease, then any part whose lease is free and
that is not done. A part's expected count is the plan's count, so the restore's check of every
expected key is as exact as today's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.jobkey import split_prefix
from cluster.store import MAX_PASSES, STALE_PASSES, Store, StoredItem


def part_of(key: str, parts: int) -> int:
    """The part of the job stored under `key`: stable across processes, hosts and versions.
    The hash leaves out the gearmand prefix (g<epoch>_), so a job stored under two prefixes (in
    both twin stores: a restore crashed between gearmand's answer and the delete) is in the same
    part of each, drained by one drainer whose restores share one `Copies`: it moves once."""
    split = split_prefix(key)
    rest = key if split is None else split[1]
    return zlib.crc32(rest.encode("utf-8", "surrogateescape")) % parts


def part_counts(keys: Iterable[str], parts: int) -> list[int]:
    """How many of `keys` each part holds: the plan's expected counts."""
    if parts < 1:
        raise GearctlError(f"a store is split into at least one part, not {parts}")
    counts = [0] * parts
    for key in keys:
        counts[part_of(key, parts)] += 1
    return counts


def part_order(survivors: Sequence[str], me: str) -> list[int]:
    """The parts in the order `me` tries them: its own first (`first_part`), then the next ones
    round the ring, so idle survivors spread over the parts left rather than all queue on part
    0. Someone not among the survivors (a later claimer, `store drain`) goes 0, 1, ..."""
    parts = len(survivors)
    start = first_part(survivors, me) if me in survivors else 0
    return [(start + n) % parts for n in range(parts)]


def resumed_expected(planned: int, moved: int, unrecorded: int) -> int:
    """What the resumer of a part expects to find in one store: the plan's count less what the
    part's earlier drainers recorded as moved, less `unrecorded` (the jobs a drainer may have
    deleted after its last record: `cluster.restore.BATCH`). A lower bound, never above what
    is there: the listing stops once it saw that many keys and moves every key it listed; the
    claimer's final sweep (an exact count of the quiescent stores) moves anything one listing
    missed."""
    return max(0, planned - moved - unrecorded)


def split_parts(items: Iterable[StoredItem], parts: int) -> list[list[StoredItem]]:
    """`items` (a store's listing, in cas order) split into parts, each still in cas order."""
    split: list[list[StoredItem]] = [[] for _ in range(parts)]
    for item in items:
        split[part_of(item.key, parts)].append(item)
    return split


def first_part(survivors: Sequence[str], me: str) -> int:
    """The part survivor `me` drains first: its rank among the survivors named in the plan."""
    ranked = sorted(survivors)
    if me not in ranked:
        raise GearctlError(f"{me} is not one of the plan's survivors {', '.join(ranked)}")
    return ranked.index(me)


class PartStore(Store):
    """Store `endpoint` as seen by the drainer of part `index` of `parts`: listings hold only the
    part's keys. Give it to `cluster.restore.restore` with the part's expected count.

    `listed`: the part's keys from the claimer's plan listing, used instead of listing the store
    again. Exact only for a part nobody has drained yet: the plan listed the store whole while it
    was quiescent, and only the part's drainer deletes the part's keys."""

    def __init__(
        self,
        endpoint: Endpoint,
        index: int,
        parts: int,
        *,
        timeout: float = 2.0,
        listed: Sequence[StoredItem] | None = None,
    ):
        if not 0 <= index < parts:
            raise GearctlError(f"part {index} of {parts} does not exist")
        super().__init__(endpoint, timeout=timeout)
        self.index = index
        self.parts = parts
        self.listed = listed

    def mine(self, item: StoredItem) -> bool:
        return part_of(item.key, self.parts) == self.index

    def snapshot(
        self,
        predicate: Callable[[StoredItem], bool] | None = None,
        *,
        expected: int | None = None,
        max_passes: int = MAX_PASSES,
        stale_passes: int = STALE_PASSES,
    ) -> list[StoredItem]:
        if expected is None:
            raise GearctlError("a part's listing needs its expected count (the store's count "
                               "includes the other parts)")  # fmt: skip
        if self.listed is not None:
            return [item for item in self.listed if predicate is None or predicate(item)]
        both = self.mine if predicate is None else lambda i: self.mine(i) and predicate(i)
        return super().snapshot(
            both, expected=expected, max_passes=max_passes, stale_passes=stale_passes
        )
