"""Ask every node's gearmand and memcached at once, each with a short timeout.

A status of 30 nodes with some hosts unreachable takes about one probe timeout, not 30: each
question runs in a thread of its own, and a host that does not answer costs its own threads
the timeout and nobody else anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient, FunctionStatus
from cluster.store import Store

PROBE_TIMEOUT = 1.0  # seconds for one answer of gearmand or memcached
MAX_THREADS = 64
T = TypeVar("T")
R = TypeVar("R")


def in_parallel(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`function` over `items`, all at once (up to MAX_THREADS), results in the items' order."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(items))) as pool:
        return list(pool.map(function, items))


@dataclass(frozen=True)
class NodeProbe:
    """What a node's gearmand and store answered (None: no answer within the timeout)."""

    functions: list[FunctionStatus] | None
    store_items: int | None

    @property
    def queued_jobs(self) -> int | None:
        return None if self.functions is None else sum(f.queued for f in self.functions)


def gearmand_status(endpoint: Endpoint | None, timeout: float) -> list[FunctionStatus] | None:
    if endpoint is None:
        return None
    try:
        return AdminClient(endpoint, timeout=timeout).status()
    except GearctlError:
        return None


def store_items(endpoint: Endpoint | None, timeout: float) -> int | None:
    if endpoint is None:
        return None
    try:
        return Store(endpoint, timeout=timeout).curr_items()
    except GearctlError:
        return None


def probe_nodes(
    nodes: Iterable[tuple[Endpoint | None, Endpoint | None]], timeout: float = PROBE_TIMEOUT
) -> list[NodeProbe]:
    """(gearmand, store) of each node -> what each answered, every question at once."""
    pairs = list(nodes)
    questions: list[Callable[[], object]] = []
    for gearman, store in pairs:
        questions.append(lambda g=gearman: gearmand_status(g, timeout))
        questions.append(lambda s=store: store_items(s, timeout))
    answers = in_parallel(lambda ask: ask(), questions)
    return [
        NodeProbe(answers[2 * i], answers[2 * i + 1])  # type: ignore[arg-type]
        for i in range(len(pairs))
    ]


def endpoint_or_none(text: str | None) -> Endpoint | None:
    """An address from a record, or None when it is missing or unreadable."""
    if not text:
        return None
    try:
        return Endpoint.parse(text)
    except GearctlError:
        return None
