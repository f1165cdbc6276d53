"""Orphan take-over: a surviving agent drains a dead node's store into its own gearmand, once.

Every agent runs a `TakeoverWatcher` thread. When the member list changes (and about once a
second, to retry) it looks for orphaned stores:
a store with jobs whose node has no member record and which nobody owns. The first survivor to
create the store's owner znode (purpose `drain`) wins; the others see it owned and stay out.
Before loading anything the winner applies the take-over rule (design invariant 4,
`old_server_is_dead`): a gearmand that refuses connections or cannot be reached is dead by the
lease rule; one that still answers is shut down over admin first; one that keeps answering is
never drained from, and reported loudly (log, metric, a `refused` take-over record).

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
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.gearman.admin import AdminClient, AdminCommandError
from cluster.lease import DRAIN, StoreLease
from cluster.metrics import AgentMetrics
from cluster.process import is_running, pid_namespace
from cluster.restore import Progress, RestoreReport, restore
from cluster.store import Store
from cluster.zkpaths import ClusterPaths

log = logging.getLogger("gearctl.takeover")

SCAN_EVERY = 1.0


@dataclass(frozen=True)
class StoreRecord:
    """What peers need to know of a store to take it over: written by its owner at each start.

    `boot_id` (the kernel's) and `pid_namespace` (inode) say where `gearmand_pid` means
    something: only a peer with both equal may look the PID up. `host` is for people only:
    hostnames repeat across containers and cloned machines."""

    address: str
    gearman: str
    host: str
    gearmand_pid: int | None
    boot_id: str | None = None
    pid_namespace: int | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoreRecord:
        raw = json.loads(data.decode())
        return cls(raw["address"], raw["gearman"], raw["host"], raw.get("gearmand_pid"),
                   raw.get("boot_id"), raw.get("pid_namespace"))  # fmt: skip

    @classmethod
    def here(cls, address: str, gearman: str, gearmand_pid: int) -> StoreRecord:
        return cls(address, gearman, socket.gethostname(), gearmand_pid, boot_id(),
                   pid_namespace())  # fmt: skip

    def same_pid_table(self) -> bool:
        """Is `gearmand_pid` a PID of this kernel and PID namespace?"""
        mine = (boot_id(), pid_namespace())
        return None not in mine and (self.boot_id, self.pid_namespace) == mine


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


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


FENCING_FAILED = "fencing failed"
SHUTDOWN_CONFIRM = 3.0  # seconds a gearmand sent admin `shutdown` has to stop answering


def old_server_is_dead(record: StoreRecord, timeout: float = 1.0) -> tuple[bool, str]:
    """The take-over rule (design invariant 4), once the owner's session expired and its owner
    znode is gone (the caller checked both): (True, how) when the store's last gearmand is
    dead, else (False, why; starting with FENCING_FAILED when it still answers).

    Refusing connections, or unreachable (timeout, no route, host unreachable): dead by the
    lease rule, its agent fenced it or its host is gone. Still answering: fencing failed
    somewhere; it gets gearmand's admin `shutdown` and is dead once it stops answering."""
    if record.same_pid_table() and record.gearmand_pid and not is_running(record.gearmand_pid):
        return True, f"gearmand pid {record.gearmand_pid} is gone (same kernel, PID namespace)"
    endpoint = Endpoint.parse(record.gearman)
    gone = _unreachable(endpoint, timeout)
    if gone is not None:
        return True, gone + ": dead by the lease rule"
    log.error("%s: gearmand %s still accepts connections after its owner's session expired; "
              "sending it admin shutdown", FENCING_FAILED, endpoint)  # fmt: skip
    answer = "it did not stop"
    deadline = time.monotonic() + SHUTDOWN_CONFIRM
    while time.monotonic() < deadline:
        try:
            AdminClient(endpoint, timeout=timeout).shutdown()
        except AdminCommandError as exc:  # Debian's 1.1.20 has no `shutdown`: no use repeating
            answer = f"it answered {exc.code} {exc.text}".strip()
            break
        except GearctlError:
            pass
        gone = _unreachable(endpoint, timeout)
        if gone is not None:
            return True, (f"gearmand {endpoint} still answered after its owner's session "
                          f"expired ({FENCING_FAILED}): shut down over admin; {gone}")  # fmt: skip
        time.sleep(0.1)
    return False, (f"{FENCING_FAILED}: gearmand {endpoint} still answers after its owner's "
                   f"session expired, and admin shutdown did not stop it ({answer}); stop it "
                   "by hand: the take-over follows")  # fmt: skip


def _unreachable(endpoint: Endpoint, timeout: float) -> str | None:
    """How a connection to `endpoint` failed (refused, timed out, no route), None if accepted."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"gearmand {endpoint} refuses connections"
    except OSError as exc:
        return f"gearmand {endpoint} cannot be reached ({exc or 'timed out'})"


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
                    if how.startswith(FENCING_FAILED):
                        self._report_fencing_failed(store, how)
                return
            self.unfenced_reported.discard(store)
            self._drain(store, source, how, lease)
        finally:
            lease.release()

    def _report_fencing_failed(self, store: str, how: str) -> None:
        """Loudly: a metric, and a take-over record `status` shows (outcome `refused: ...`)."""
        if self.metrics:
            self.metrics.fencing_failed()
        now = time.time()
        record = Takeover(store=store, by=self.node, started=now, finished=now,
                          outcome=f"refused: {how}")  # fmt: skip
        self.zk.create(f"{self.paths.takeovers}/t-", json.dumps(asdict(record)).encode(),
                       sequence=True, makepath=True)  # fmt: skip

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
