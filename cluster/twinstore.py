"""Twin stores (issue 18): which of a node's two memcached instances the next gearmand gets.

gearmand 1.1.20 walks its whole store before it serves (docs/architecture.md, "Serving at once at
any store size"), so each gearmand start goes to the twin that holds fewer items, normally an empty
one, and the restore reads the jobs from both. Counts must be taken while no gearmand runs on
either twin (quiescent), as the single-store agent counts today.

The agent (cluster.agent.machine) plans every gearmand start with `plan_start`, with one store
as well as with twins: one store serves every start and is restored from itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError


@dataclass(frozen=True)
class TwinStart:
    """One gearmand start: the twin it writes, and where its restore reads, in that order."""

    serve: Endpoint
    restore_from: tuple[Endpoint, ...]  # the other twin first (its jobs are the older ones)
    expected: int  # jobs the restore must move: both twins' quiescent counts
    walk: int  # items the new gearmand walks before it serves (0 but after a crash mid-restore)


def plan_start(twins: tuple[Endpoint, ...], counts: tuple[int, ...]) -> TwinStart:
    """The twin with fewer items serves (the first on a tie); every twin holding items is
    restored from, the other one first. A single store (no twin) serves and is restored from."""
    if len(twins) != len(counts) or len(twins) not in (1, 2):
        raise GearctlError(f"one or two stores with a count each, not {twins} and {counts}")
    if min(counts) < 0:
        raise GearctlError(f"item counts cannot be negative: {counts}")
    if len(twins) == 1:
        return TwinStart(twins[0], twins if counts[0] else (), counts[0], counts[0])
    if twins[0] == twins[1]:
        raise GearctlError(f"the twin stores must be two memcached instances, both are {twins[0]}")
    serve = 0 if counts[0] <= counts[1] else 1
    other = 1 - serve
    restore_from = tuple(twins[i] for i in (other, serve) if counts[i])
    return TwinStart(twins[serve], restore_from, sum(counts), counts[serve])
