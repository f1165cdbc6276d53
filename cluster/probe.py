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
MAX_THREADS = 96  # 30 nodes with twin stores ask 90 questions: still one timeout
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
    twin_items: int | None = None  # its twin store's (None: no twin, or no answer)

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
        with Store(endpoint, timeout=timeout) as store:
            return store.curr_items()
    except GearctlError:
        return None


def probe_nodes(
    nodes: Iterable[tuple[Endpoint | None, Endpoint | None, Endpoint | None]],
    timeout: float = PROBE_TIMEOUT,
) -> list[NodeProbe]:
    """(gearmand, store, twin store) of each node -> what each answered, every question at
    once (a node without twin store: None, never asked)."""
    triples = list(nodes)
    questions: list[Callable[[], object]] = []
    for gearman, store, twin in triples:
        questions.append(lambda g=gearman: gearmand_status(g, timeout))
        questions.append(lambda s=store: store_items(s, timeout))
        if twin is not None:
            questions.append(lambda t=twin: store_items(t, timeout))
    answers = iter(in_parallel(lambda ask: ask(), questions))
    probes = []
    for _, _, twin in triples:
        functions, items = next(answers), next(answers)
        twin_items = None if twin is None else next(answers)
        probes.append(NodeProbe(functions, items, twin_items))  # type: ignore[arg-type]
    return probes


def endpoint_or_none(text: str | None) -> Endpoint | None:
    """An address from a record, or None when it is missing or unreadable."""
    if not text:
        return None
    try:
        return Endpoint.parse(text)
    except GearctlError:
        return None
