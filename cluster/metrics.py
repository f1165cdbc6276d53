"""The agent's Prometheus metrics: what it counts, and the HTTP endpoint that serves them.

Every metric carries the label `node`. Counters and the state metrics are updated by one-line
calls from the agent, the take-over watcher and the session guard's fence callback; what gearmand
and memcached report (`gearmand_up`, queued jobs per function, store items and bytes) is read when
Prometheus scrapes, at most once per `REFRESH_EVERY`, so the health checks cost nothing extra.

Each agent has its own `CollectorRegistry` (never the process-global one), so several agents
can live in one process (tests) without clashing names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.coord import AGENT_STATES, MemberRecord, NodeState, Outcome
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, StoreError
from cluster.gearman.admin import AdminClient, FunctionStatus
from cluster.restore import RestoreReport
from cluster.store import Store

log = logging.getLogger("gearctl.metrics")

# Counters' `_created` series only double the output (a process-wide prometheus_client setting).
disable_created_metrics()

REFRESH_EVERY = 1.0  # seconds: scrapes closer together reuse the last reading
ZOOKEEPER_STATES = ["lost", "suspended", "connected"]  # kazoo's KazooState, lower case
RESTORE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class AgentMetrics:
    """The metrics of one node agent, in a registry of their own."""

    def __init__(self, node: str, gearman: Endpoint, store: Endpoint, timeout: float = 1.0) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.server: WSGIServer | None = None
        self._restarts_seen = 0
        r = self.registry
        self.restarts = Counter(
            "gearctl_gearmand_restarts",
            "gearmand deaths or hangs after which the agent restarted it",
            ["node"],
            registry=r,
        ).labels(node)
        self.agent_state = Enum(
            "gearctl_agent_state",
            "The agent's state, as `gearctl cluster status` shows it",
            ["node"],
            registry=r,
            states=list(AGENT_STATES),
        ).labels(node)
        self.restore_jobs = Counter(
            "gearctl_restore_jobs",
            "Stored jobs of the node's own store by restore result: moved back into gearmand, "
            "or deferred (their function name is not known yet)",
            ["node", "result"],
            registry=r,
        )
        self.restore_seconds = Histogram(
            "gearctl_restore_duration_seconds",
            "Duration of finished restores of the node's own store",
            ["node"],
            registry=r,
            buckets=RESTORE_BUCKETS,
        ).labels(node)
        self.deferred = Gauge(
            "gearctl_deferred_jobs",
            "Stored jobs waiting until their function name is known",
            ["node"],
            registry=r,
        ).labels(node)
        self.takeovers = Counter(
            "gearctl_takeovers",
            "Take-overs of dead peers' stores by this agent, by outcome: started, done, "
            "interrupted, fencing-failed (the old gearmand kept answering: not taken over)",
            ["node", "outcome"],
            registry=r,
        )
        self.drained = Counter(
            "gearctl_takeover_drained_jobs",
            "Jobs drained from dead peers' stores into this node's gearmand",
            ["node"],
            registry=r,
        ).labels(node)
        self.fences = Counter(
            "gearctl_fence_events",
            "Times the agent killed its gearmand because its ZooKeeper session was in doubt",
            ["node"],
            registry=r,
        ).labels(node)
        self.store_losses = Counter(
            "gearctl_store_lost",
            "Times the node's store was lost: down (no answer), or restarted between two health "
            "checks (it answers again, empty)",
            ["node", "how"],
            registry=r,
        )
        self.zookeeper = Enum(
            "gearctl_zookeeper_state",
            "The agent's ZooKeeper connection",
            ["node"],
            registry=r,
            states=ZOOKEEPER_STATES,
        ).labels(node)
        for outcome in ("started", "done", "interrupted"):
            self.takeovers.labels(node, outcome)
        for result in ("moved", "deferred"):
            self.restore_jobs.labels(node, result)
        for how in ("down", "restarted"):
            self.store_losses.labels(node, how)
        self.agent_state.state(NodeState.STARTING)
        self.live = LiveCollector(node, gearman, store, timeout)
        r.register(self.live)

    # -- the HTTP endpoint --------------------------------------------------------------------

    def serve(self, endpoint: Endpoint | None) -> bool:
        """Serve /metrics on `endpoint` (None: metrics are off). A port that cannot be bound is
        logged as an error and the agent goes on without metrics: gearman matters more."""
        if endpoint is None:
            return False
        try:
            self.server, _thread = start_http_server(endpoint.port, endpoint.host, self.registry)
        except OSError as exc:
            reason = exc.strerror or exc
            log.error(
                "metrics: cannot listen on %s (%s); running without metrics", endpoint, reason
            )
            return False
        log.info("metrics on http://%s/metrics", endpoint)
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- hooks --------------------------------------------------------------------------------

    def record(self, record: MemberRecord) -> None:
        """Mirror the agent's member record: state, deferred jobs, restarts."""
        self.agent_state.state(record.state)
        self.deferred.set(record.deferred_jobs)
        if record.restarts > self._restarts_seen:
            self.restarts.inc(record.restarts - self._restarts_seen)
            self._restarts_seen = record.restarts

    def restored(self, report: RestoreReport) -> None:
        """A finished restore of the node's own store."""
        self.moved(report.moved)
        self.restore_jobs.labels(self.node, "deferred").inc(report.deferred)
        self.restore_seconds.observe(report.seconds)

    def moved(self, jobs: int) -> None:
        """Jobs moved by an interrupted restore, or by a retry of deferred jobs."""
        self.restore_jobs.labels(self.node, "moved").inc(jobs)

    def fenced(self) -> None:
        self.fences.inc()
        self.agent_state.state(NodeState.FENCED)

    def zookeeper_state(self, state: str) -> None:
        """A kazoo connection listener (called on kazoo's thread: only records)."""
        self.zookeeper.state(state.lower())

    def count_error(self, exc: Exception) -> None:
        if isinstance(exc, StoreError):
            self.live.store_error()

    def takeover_started(self) -> None:
        self.takeovers.labels(self.node, "started").inc()

    def store_lost(self, how: str) -> None:
        self.store_losses.labels(self.node, how).inc()

    def fencing_failed(self) -> None:
        self.takeovers.labels(self.node, "fencing-failed").inc()

    def takeover_finished(self, outcome: Outcome, jobs: int) -> None:
        self.takeovers.labels(self.node, outcome.value).inc()
        self.drained.inc(jobs)


@dataclass(frozen=True)
class Reading:
    """What gearmand and the store answered at one scrape (None: no answer)."""

    functions: list[FunctionStatus] | None
    store: dict[str, str] | None


class LiveCollector(Collector):
    """Reads gearmand's `status` and memcached's `stats` when scraped (cached for a second)."""

    def __init__(self, node: str, gearman: Endpoint, store: Endpoint, timeout: float) -> None:
        self.node = node
        self.gearman = gearman
        self.store = store
        self.timeout = timeout
        self.store_errors = 0  # the agent's failed store requests, and the scrapes' own
        self.lock = threading.Lock()  # one reading at a time
        self.errors_lock = threading.Lock()  # never held while waiting for gearmand or memcached
        self.reading = Reading(None, None)
        self.read_at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        return self._families(Reading(None, None), 0, samples=False)

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            if time.monotonic() - self.read_at >= REFRESH_EVERY:
                self.reading = Reading(self._functions(), self._store_stats())
                self.read_at = time.monotonic()
            reading = self.reading
        with self.errors_lock:
            errors = self.store_errors
        return self._families(reading, errors)

    def _functions(self) -> list[FunctionStatus] | None:
        try:
            return AdminClient(self.gearman, timeout=self.timeout).status()
        except GearctlError:
            return None

    def _store_stats(self) -> dict[str, str] | None:
        try:
            return Store(self.store, timeout=self.timeout).stats()
        except GearctlError:
            self.store_error()
            return None

    def store_error(self) -> None:
        with self.errors_lock:
            self.store_errors += 1

    def _families(self, reading: Reading, errors: int, samples: bool = True) -> Iterator[Metric]:
        node = self.node
        up = GaugeMetricFamily(
            "gearctl_gearmand_up",
            "1 if gearmand answers its admin `status` within the check timeout",
            labels=["node"],
        )
        queued = GaugeMetricFamily(
            "gearctl_queued_jobs",
            "Jobs gearmand holds per function (its `status` total, running ones included)",
            labels=["node", "function"],
        )
        workers = GaugeMetricFamily(
            "gearctl_function_workers",
            "Workers registered with gearmand per function",
            labels=["node", "function"],
        )
        store_up = GaugeMetricFamily(
            "gearctl_store_up", "1 if the node's store (memcached) answers `stats`", labels=["node"]
        )
        items = GaugeMetricFamily(
            "gearctl_store_items", "Items in the node's store (curr_items)", labels=["node"]
        )
        used = GaugeMetricFamily(
            "gearctl_store_bytes", "Bytes used in the node's store (bytes)", labels=["node"]
        )
        limit = GaugeMetricFamily(
            "gearctl_store_limit_bytes",
            "Memory limit of the node's store (limit_maxbytes); a full store refuses jobs",
            labels=["node"],
        )
        store_errors = CounterMetricFamily(
            "gearctl_store_errors",
            "Failed requests of the agent (and of scrapes) to the node's store (memcached)",
            labels=["node"],
        )
        if samples:
            store_errors.add_metric([node], errors)
            up.add_metric([node], 0 if reading.functions is None else 1)
            for function in reading.functions or []:
                queued.add_metric([node, function.name], function.queued)
                workers.add_metric([node, function.name], function.workers)
            store_up.add_metric([node], 0 if reading.store is None else 1)
            if reading.store is not None:
                items.add_metric([node], float(reading.store.get("curr_items", "nan")))
                used.add_metric([node], float(reading.store.get("bytes", "nan")))
                limit.add_metric([node], float(reading.store.get("limit_maxbytes", "nan")))
        yield from (up, queued, workers, store_up, items, used, limit, store_errors)
