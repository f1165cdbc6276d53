"""Orphan take-over: a surviving agent drains a dead node's store into its own gearmand, once.

Every agent runs a `TakeoverWatcher` thread. When the member list changes (and about once a
second, to retry) it looks for orphaned stores:
a store with jobs whose node has no member record and which nobody owns. The first survivor to
create the store's owner znode (purpose `drain`) wins; the others see it owned and stay out.
Before loading anything the winner fences the old server (design invariant 4): its gearmand
must refuse connections, or its process must be gone (checked when it ran on this host). If
neither can be established it waits and reports, and never drains.

While `takeover-paused` exists (`gearctl takeover pause`) no survivor scans. `drain_store` is
the drain itself, shared with the operator's `gearctl store drain` (cluster/drain.py).

One survivor drains a whole store (rather than survivors sharing it): the restore then keeps the
store's FIFO order per priority, and a drainer that dies leaves one store to resume, not pieces.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psutil
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.lease import DRAIN, StoreLease
from cluster.metrics import AgentMetrics
from cluster.restore import Progress, RestoreReport, restore
from cluster.store import Store
from cluster.zkpaths import ClusterPaths

log = logging.getLogger("gearctl.takeover")

SCAN_EVERY = 1.0


@dataclass(frozen=True)
class StoreRecord:
    """What peers need to know of a store to take it over: written by its owner at each start."""

    address: str
    gearman: str
    host: str
    gearmand_pid: int | None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoreRecord:
        raw = json.loads(data.decode())
        return cls(raw["address"], raw["gearman"], raw["host"], raw.get("gearmand_pid"))


@dataclass
class Takeover:
    store: str
    by: str
    started: float
    finished: float | None = None
    jobs: int = 0
    seconds: float = 0.0
    outcome: str = "running"
    manual: bool = False  # `gearctl store drain`, not a survivor's automatic take-over


def old_server_is_dead(record: StoreRecord, timeout: float = 1.0) -> tuple[bool, str]:
    """Fencing check: (True, how) if the store's last gearmand is known dead, else (False, why)."""
    if record.host == socket.gethostname() and record.gearmand_pid is not None:
        try:
            if psutil.Process(record.gearmand_pid).status() != psutil.STATUS_ZOMBIE:
                return False, f"gearmand pid {record.gearmand_pid} is still running on this host"
        except psutil.Error:
            return True, f"gearmand pid {record.gearmand_pid} is gone"
    endpoint = Endpoint.parse(record.gearman)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return False, f"gearmand {endpoint} still accepts connections"
    except ConnectionRefusedError:
        return True, f"gearmand {endpoint} refuses connections"
    except OSError as exc:
        return False, f"gearmand {endpoint} cannot be reached to confirm it is dead ({exc})"


class TakeoverWatcher:
    """Finds orphaned stores and drains them into `target` (this node's gearmand)."""

    def __init__(
        self,
        zk: KazooClient,
        paths: ClusterPaths,
        node: str,
        target: Endpoint,
        may_drain: Callable[[], bool],
        stopping: threading.Event,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.zk = zk
        self.metrics = metrics
        self.paths = paths
        self.node = node
        self.target = target
        self.may_drain = may_drain
        self.stopping = stopping
        self.functions = FunctionRegistry(zk, paths.functions)
        self.unfenced_reported: set[str] = set()
        # store -> (items, names known) of the last drain that moved nothing: skip it while
        # neither changes (its jobs wait for their function names; see cluster.restore)
        self.idle: dict[str, tuple[int, int]] = {}
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="takeover", daemon=True)

    def start(self) -> None:
        """Scan when the member list changes (a session expired), and every SCAN_EVERY seconds
        (to retry stores that were unreachable or not yet fenced)."""
        self.zk.ensure_path(self.paths.members)
        ChildrenWatch(self.zk, self.paths.members, self._members_changed)
        self.thread.start()

    def _members_changed(self, _children: list[str]) -> bool:
        self.wake.set()  # kazoo's thread: only signal, never block
        return True

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(SCAN_EVERY)
            self.wake.clear()
            if self.stopping.is_set() or not self.may_drain():
                continue
            try:
                if takeover_paused(self.zk, self.paths):
                    continue
                for store in self._orphans():
                    self._take_over(store)
            except (GearctlError, KazooException) as exc:
                log.warning("take-over scan failed: %s", exc)

    def _orphans(self) -> list[str]:
        try:
            stores = self.zk.get_children(self.paths.stores)
        except NoNodeError:
            return []
        members = set(self.zk.get_children(self.paths.members))
        return [
            store
            for store in sorted(stores)
            if store != self.node
            and store not in members
            and self.zk.exists(self.paths.store_owner(store)) is None
        ]

    def _take_over(self, store: str) -> None:
        try:
            record = StoreRecord.decode(self.zk.get(self.paths.store(store))[0])
        except (NoNodeError, ValueError, KeyError):
            return  # a store nobody ever described cannot be reached
        source = Store(Endpoint.parse(record.address))
        try:
            items = source.curr_items()
            idle = self.idle.get(store)  # asking the cluster for names costs a round of I/O
            if items == 0 or (idle is not None and idle == (items, len(self._known()))):
                return
        except GearctlError as exc:
            log.warning("orphaned store %s (%s) unreachable: %s; will retry", store,
                        record.address, exc)  # fmt: skip
            return
        lease = StoreLease(self.zk, self.paths.store_owner(store), self.node, DRAIN)
        if lease.try_acquire() is not None:
            return  # another survivor won
        try:
            dead, how = old_server_is_dead(record)
            if not dead:
                if store not in self.unfenced_reported:
                    log.error("not draining store %s: %s", store, how)
                    self.unfenced_reported.add(store)
                return
            self.unfenced_reported.discard(store)
            self._drain(store, source, how, lease)
        finally:
            lease.release()

    def _known(self) -> set[str]:
        return known_in_cluster(self.zk, self.paths, self.functions, self.target, 1.0)

    def _drain(self, store: str, source: Store, how: str, lease: StoreLease) -> None:
        known = self._known()
        if self.metrics:
            self.metrics.takeover_started()
        takeover, report = drain_store(
            self.zk, self.paths, store, source, self.target, by=self.node, how=how, known=known,
            should_continue=lambda: self.may_drain() and lease.held(),
        )  # fmt: skip
        if self.metrics:
            self.metrics.takeover_finished(takeover.outcome, takeover.jobs)
        if report is not None and report.deferred and takeover.outcome.startswith("done"):
            self.idle[store] = (report.deferred, len(known))


def takeover_paused(zk: KazooClient, paths: ClusterPaths) -> bool:
    """Is automatic take-over paused (`gearctl takeover pause`)? Manual drains still run."""
    return zk.exists(paths.takeover_paused) is not None


def drain_store(
    zk: KazooClient,
    paths: ClusterPaths,
    store: str,
    source: Store,
    target: Endpoint,
    *,
    by: str,
    how: str,
    known: set[str],
    should_continue: Callable[[], bool],
    progress: Progress | None = None,
    manual: bool = False,
) -> tuple[Takeover, RestoreReport | None]:
    """Drain a dead node's `store` into gearmand `target`, recorded under `takeovers/`.

    The caller holds the store's lease (purpose `drain`) and has fenced its old gearmand
    (`old_server_is_dead`); `should_continue` must turn False once the lease is lost. Returns
    the take-over record as written and the restore's report (None if it never started).
    """
    expected = source.curr_items()  # quiescent: its gearmand is dead and we own the store
    takeover = Takeover(store=store, by=by, started=time.time(), manual=manual)
    path = zk.create(
        f"{paths.takeovers}/t-", json.dumps(asdict(takeover)).encode(),
        sequence=True, makepath=True,
    )  # fmt: skip
    log.warning("taking over store %s: %s; draining %d jobs into %s", store, how, expected,
                target)  # fmt: skip
    report: RestoreReport | None = None
    try:
        report = restore(
            source,
            target,
            expected=expected,
            keep_prefix=None,
            known_functions=known,
            progress=progress,
            should_continue=should_continue,
        )
        takeover.jobs, takeover.outcome = report.moved, "done"
        if report.deferred:
            takeover.outcome = f"done; {report.deferred} jobs wait for their function name"
    except GearctlError as exc:
        log.error("draining store %s stopped: %s", store, exc)
        takeover.outcome = f"interrupted: {exc}"
        report = getattr(exc, "report", None)
        takeover.jobs = report.moved if report is not None else 0
    takeover.finished = time.time()
    takeover.seconds = takeover.finished - takeover.started
    log.warning("take-over of store %s %s: %d jobs in %.2fs", store, takeover.outcome,
                takeover.jobs, takeover.seconds)  # fmt: skip
    zk.set(path, json.dumps(asdict(takeover)).encode())
    return takeover, report
