"""Orphan take-over: a surviving agent drains a dead node's store into its own gearmand, once.

Every agent runs a `TakeoverWatcher` thread. When the member list changes (and about once a
second, to retry) it looks for orphaned stores: a store with jobs (a node with twin stores: in
either twin) whose node has no member record and which nobody owns. A twin that does not answer is
left pending and drained by a later claim once it answers. It claims and drains each
with `cluster.claim.claim_and_drain`: the first survivor to create the store's owner znode
(purpose `drain`) wins; the others see it owned and stay out. Before loading anything the
winner applies the take-over rule (design invariant 4, `cluster.fencing.old_server_is_dead`): a
gearmand that refuses connections or cannot be reached is dead by the lease rule; one that still
answers is shut down over admin first; one that keeps answering is never drained from, and
reported loudly (log, metric, a `refused` take-over record that `status` shows).

With `[takeover] spread = true` the winner spreads the store's jobs over every live survivor
(cluster/spreaddrain.py): it plans the parts and keeps the store's owner znode until every part
is done, and each scan of every spreading survivor also drains the free parts of any plan.

While `takeover-paused` exists (`gearctl takeover pause`) no survivor scans.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cluster import spreaddrain
from cluster.claim import ClaimRefused, Refusal, claim_and_drain, other_serving
from cluster.coord import Coordination, Outcome, TakeoverRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.fencing import FENCING_FAILED
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.metrics import AgentMetrics
from cluster.store import Store

log = logging.getLogger("gearctl.takeover")

SCAN_EVERY = 1.0


class TakeoverWatcher:
    """Finds orphaned stores and drains them into `target` (this node's gearmand)."""

    def __init__(
        self,
        coord: Coordination,
        node: str,
        target: Endpoint,
        may_drain: Callable[[], bool],
        stopping: threading.Event,
        metrics: AgentMetrics | None = None,
        spread: bool = False,
    ) -> None:
        self.coord = coord
        self.spread = spread
        self.metrics = metrics
        self.node = node
        self.target = target
        self.may_drain = may_drain
        self.stopping = stopping
        self.functions = FunctionRegistry(coord)
        self.unfenced_reported: set[str] = set()
        # store -> (items, names known) of the last drain that moved nothing: skip it while
        # neither changes (its jobs wait for their function names; see cluster.restore)
        self.idle: dict[str, tuple[int, int]] = {}
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="takeover", daemon=True)

    def start(self) -> None:
        """Scan when the member list changes (a session expired), and every SCAN_EVERY seconds
        (to retry stores that were unreachable or not yet fenced)."""
        self.coord.on_members_changed(self.wake.set)  # kazoo's thread: only signal
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(SCAN_EVERY)
            self.wake.clear()
            if self.stopping.is_set() or not self.may_drain():
                continue
            try:
                if self.coord.takeover_paused():
                    continue
                for store in self.coord.orphans(exclude=self.node):
                    self._take_over(store)
                if self.spread:
                    for store in self.coord.spread_stores():
                        self._drain_parts(store)
            except GearctlError as exc:
                log.warning("take-over scan failed: %s", exc)

    def _take_over(self, store: str) -> None:
        try:
            record = self.coord.store_record(store)
        except (ValueError, KeyError):
            return  # a store nobody ever described cannot be reached
        if record is None:
            return
        counts = {address: _items(address) for address in record.addresses}
        answering = [count for count in counts.values() if not isinstance(count, GearctlError)]
        if not answering:
            log.warning("orphaned store %s (%s) unreachable: %s; will retry", store,
                        ", ".join(record.addresses), next(iter(counts.values())))  # fmt: skip
            return
        items = sum(answering)
        # a pending twin (silent at the last claim) that answers again is claimed even empty:
        # the claim checks it for a restart and clears `pending`
        back = record.pending is not None and isinstance(counts.get(record.pending), int)
        try:
            idle = self.idle.get(store)  # asking the cluster for names costs a round of I/O
            if not back and (
                items == 0 or (idle is not None and idle == (items, len(self._known())))
            ):
                return
        except GearctlError as exc:
            log.warning("orphaned store %s: %s; will retry", store, exc)
            return
        known: set[str] = set()

        def names() -> set[str]:
            known.update(self._known())
            return known

        try:
            drained = claim_and_drain(
                self.coord,
                store,
                record,
                self.target,
                by=self.node,
                known=names,
                keep_going=self.may_drain,
                started=self._started,
                spread=self.spread,
            )
        except ClaimRefused as refused:
            if refused.refusal is Refusal.HELD and self.spread:
                self.coord.on_spread_planned(store, self.wake.set)  # scan for parts at once
            if refused.refusal is Refusal.NOT_FENCED and store not in self.unfenced_reported:
                log.error("not draining store %s: %s", store, refused.detail)
                self.unfenced_reported.add(store)
                if refused.detail.startswith(FENCING_FAILED):
                    self._report_fencing_failed(store, refused.detail)
            return  # a member came back, or another survivor won: nothing to do
        self.unfenced_reported.discard(store)
        takeover, report = drained.takeover, drained.report
        if self.metrics:
            self.metrics.takeover_finished(takeover.outcome, drained.here)
        left = 0 if report is None else report.left_in_store  # deferred, refused, not gearmand's
        if left and takeover.done:  # drain again once items or known names change
            self.idle[store] = (left, len(known))

    def _drain_parts(self, store: str) -> None:
        """Help another claimer's spread drain: the plan's free parts, this node's first."""
        if store == self.node:
            return
        plan = self.coord.spread_plan(store)
        if plan is None:
            return
        ready = spreaddrain.counted(self.coord, store, plan, self.may_drain)
        if ready is None:
            return
        plan, listed = ready
        moved = spreaddrain.drain_parts(
            self.coord, store, plan, self.target, by=self.node, known=self._known(),
            keep_going=self.may_drain, overflow=lambda: other_serving(self.coord, self.target),
            listed=listed,
        )  # fmt: skip
        if self.metrics:
            self.metrics.parts_drained(moved)

    def _report_fencing_failed(self, store: str, how: str) -> None:
        """Loudly: a metric, and a take-over record `status` shows (outcome `refused: ...`)."""
        if self.metrics:
            self.metrics.fencing_failed()
        record = TakeoverRecord(store=store, by=self.node, started=time.time())
        record.finish(Outcome.REFUSED, 0, how)
        self.coord.record_takeover(record)

    def _started(self) -> None:
        if self.metrics:
            self.metrics.takeover_started()

    def _known(self) -> set[str]:
        return known_in_cluster(self.functions, self.target, 1.0)


def _items(address: str) -> int | GearctlError:
    """A store's items, or why it does not answer (a silent twin: the other is drained)."""
    try:
        with Store(Endpoint.parse(address)) as store:
            return store.curr_items()
    except GearctlError as exc:
        return exc
