"""The agent's Prometheus metrics: what it counts, and the node state its HTTP endpoints serve.

Every gearctl metric carries the label `node` (the agent's process metrics, `process_*`, come
from prometheus-client's ProcessCollector and carry only the scrape's labels). Counters and the
state metrics are updated by one-line calls from the agent, the take-over watcher and the session
guard's fence callback; what gearmand, memcached and ZooKeeper report (`gearmand_up`, jobs and
workers per function, store items and bytes, the pause flag) is read when Prometheus scrapes, at
most once per `REFRESH_EVERY` (the oldest job's age, a walk over the store's keys, at most once
per `OLDEST_EVERY`), so the health checks cost nothing extra. The HTTP server itself (/metrics,
/health, /ready, /status) is cluster/httpapi.py.

Each agent has its own `CollectorRegistry` (never the process-global one), so several agents
can live in one process (tests) without clashing names.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import __version__
from cluster.coord import AGENT_STATES, Coordination, MemberRecord, NodeState, Outcome
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, StoreError
from cluster.gearman.admin import AdminClient, FunctionStatus
from cluster.jobage import oldest_job_ages
from cluster.restore import RestoreReport
from cluster.store import Store

if TYPE_CHECKING:
    from cluster.httpapi import HttpServer

log = logging.getLogger("gearctl.metrics")

# Counters' `_created` series only double the output (a process-wide prometheus_client setting).
disable_created_metrics()

REFRESH_EVERY = 1.0  # seconds: scrapes closer together reuse the last reading
OLDEST_EVERY = 10.0  # seconds between walks over the store's keys for the oldest jobs' ages
ZOOKEEPER_STATES = ["lost", "suspended", "connected"]  # kazoo's KazooState, lower case
RESTORE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class AgentMetrics:
    """The metrics of one node agent, in a registry of their own."""

    def __init__(
        self,
        node: str,
        gearman: Endpoint,
        stores: tuple[Endpoint, ...],
        timeout: float = 1.0,
    ) -> None:
        """`stores`: the node's stores (`AgentConfig.stores`: one, or two twins; all are read)."""
        if not stores:
            raise ValueError(f"agent metrics of node {node} need at least one store")
        self.node = node
        self.gearman = gearman
        self.timeout = timeout
        self.registry = CollectorRegistry()
        self.server: HttpServer | None = None
        self._restarts_seen = 0
        self._gearmand_pid: int | None = None
        self._takeover_started: float | None = None  # monotonic start of the running take-over
        # What /health and /status answer from: the agent's latest member record (None until
        # the agent's first update) and its latest state (fenced is set by the fence hook).
        self.latest: MemberRecord | None = None
        self.state = NodeState.STARTING
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds of the agent
        Info("gearctl_build", "The agent's gearctl and Python versions", ["node"],
             registry=r).labels(node).info(
            {"version": __version__, "python": platform.python_version()}
        )  # fmt: skip
        self.gearmand_start = Gauge(
            "gearctl_gearmand_start_time_seconds",
            "When the agent last started gearmand (unix time)",
            ["node"],
            registry=r,
        ).labels(node)
        self.takeover_seconds = Histogram(
            "gearctl_takeover_duration_seconds",
            "Duration of finished take-overs (done or interrupted) of dead peers' stores",
            ["node"],
            registry=r,
            buckets=RESTORE_BUCKETS,
        ).labels(node)
        self.takeover_start = Gauge(
            "gearctl_takeover_start_time_seconds",
            "When the take-over this agent runs now started (unix time); 0 when none runs",
            ["node"],
            registry=r,
        ).labels(node)
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
            "Stored jobs of the node's own store by restore result: moved back into gearmand "
            "(overflowed: of those, to another node's, its own refusing them twice), deferred "
            "(their function name is not known yet), refused (by every gearmand, twice: they "
            "stay in the store), skipped (keys that are not gearmand's)",
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
        self.refused = Gauge(
            "gearctl_refused_jobs",
            "Stored jobs every gearmand refused twice (a full store): they wait in the store and "
            "are tried again every 30 s",
            ["node"],
            registry=r,
        ).labels(node)
        self.pending_twins = Gauge(
            "gearctl_store_pending",
            "1 while the twin store did not answer at gearmand's start: its jobs wait until it "
            "answers and the agent restores them",
            ["node", "store"],
            registry=r,
        )
        self.names_unpublished = Counter(
            "gearctl_function_names_unpublished",
            "Function names gearmand listed that the agent left unpublished in ZooKeeper, by "
            "the bound they hit: size (no job key can hold them), count (ZooKeeper holds enough), "
            "rate (too many new ones a minute); counted at every health check",
            ["node", "reason"],
            registry=r,
        )
        self.takeovers = Counter(
            "gearctl_takeovers",
            "Take-overs of dead peers' stores by this agent, by outcome: started, done, "
            "interrupted, fencing-failed (the old gearmand kept answering: not taken over)",
            ["node", "outcome"],
            registry=r,
        )
        self.drained = Counter(
            "gearctl_takeover_drained_jobs",
            "Jobs drained from dead peers' stores into this node's gearmand (whole stores, and "
            "the parts of spread drains this node drained)",
            ["node"],
            registry=r,
        ).labels(node)
        self.fences = Counter(
            "gearctl_fence_events",
            "Times the agent killed its gearmand because its ZooKeeper session was in doubt",
            ["node"],
            registry=r,
        ).labels(node)
        self.zookeeper = Enum(
            "gearctl_zookeeper_state",
            "The agent's ZooKeeper connection",
            ["node"],
            registry=r,
            states=ZOOKEEPER_STATES,
        ).labels(node)
        self.store_losses = Counter(
            "gearctl_store_lost",
            "Times the node's store was lost: down (no answer), or restarted between two health "
            "checks (it answers again, empty)",
            ["node", "how"],
            registry=r,
        )
        for outcome in ("started", "done", "interrupted"):
            self.takeovers.labels(node, outcome)
        for result in ("moved", "overflowed", "deferred", "refused", "skipped"):
            self.restore_jobs.labels(node, result)
        for how in ("down", "restarted"):
            self.store_losses.labels(node, how)
        for store in stores:
            self.pending_twins.labels(node, str(store))
        self.agent_state.state(NodeState.STARTING)
        self.live = LiveCollector(node, gearman, stores, timeout)
        r.register(self.live)

    # -- the HTTP endpoint --------------------------------------------------------------------

    def serve(self, endpoint: Endpoint | None) -> bool:
        """Serve /metrics, /health, /ready and /status on `endpoint` (None: off). A port that
        cannot be bound is logged as an error and the agent goes on without: gearman matters
        more."""
        from cluster.httpapi import HttpServer

        if endpoint is None:
            return False
        try:
            self.server = HttpServer(endpoint, self)
        except OSError as exc:
            reason = exc.strerror or exc
            log.error(
                "metrics: cannot listen on %s (%s); running without metrics", endpoint, reason
            )
            return False
        log.info("metrics on http://%s/metrics (health on /health, /ready, /status)", endpoint)
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def watch_coordination(self, coord: Coordination) -> None:
        """Report the agent's ZooKeeper session: granted timeout, and the cluster's pause flag."""
        self.live.coord = coord

    # -- hooks --------------------------------------------------------------------------------

    def record(self, record: MemberRecord) -> None:
        """Mirror the agent's member record: state, deferred and refused jobs, restarts,
        gearmand start."""
        self.latest = record
        self.state = record.state
        self.agent_state.state(record.state)
        if record.gearmand_pid is not None and record.gearmand_pid != self._gearmand_pid:
            try:
                started = psutil.Process(record.gearmand_pid).create_time()
            except psutil.Error:
                started = time.time()
            self.gearmand_start.set(started)
        self._gearmand_pid = record.gearmand_pid
        self.deferred.set(record.deferred_jobs)
        self.refused.set(record.refused_jobs)
        if record.restarts > self._restarts_seen:
            self.restarts.inc(record.restarts - self._restarts_seen)
            self._restarts_seen = record.restarts

    def names_left_out(self, left_out: Mapping[str, int]) -> None:
        """Function names a health check left unpublished, by reason."""
        for reason, count in left_out.items():
            self.names_unpublished.labels(self.node, reason).inc(count)

    def restored(self, report: RestoreReport) -> None:
        """A finished restore of the node's own store."""
        self.moved(report.moved)
        self.restore_jobs.labels(self.node, "overflowed").inc(report.overflowed)
        self.restore_jobs.labels(self.node, "deferred").inc(report.deferred)
        self.restore_jobs.labels(self.node, "refused").inc(len(report.refused))
        self.restore_jobs.labels(self.node, "skipped").inc(len(report.skipped))
        self.restore_seconds.observe(report.seconds)

    def moved(self, jobs: int) -> None:
        """Jobs moved by an interrupted restore, or by a retry of deferred jobs."""
        self.restore_jobs.labels(self.node, "moved").inc(jobs)

    def fenced(self) -> None:
        self.fences.inc()
        self.state = NodeState.FENCED
        self.agent_state.state(NodeState.FENCED)

    def zookeeper_state(self, state: str) -> None:
        """A kazoo connection listener (called on kazoo's thread: only records)."""
        self.zookeeper.state(state.lower())

    def count_error(self, exc: Exception) -> None:
        if isinstance(exc, StoreError):
            self.live.store_error()

    def takeover_started(self) -> None:
        """One take-over at a time: the watcher thread runs them one after the other."""
        self.takeovers.labels(self.node, "started").inc()
        self._takeover_started = time.monotonic()
        self.takeover_start.set(time.time())

    def store_lost(self, how: str) -> None:
        self.store_losses.labels(self.node, how).inc()

    def twin_pending(self, store: Endpoint, pending: bool) -> None:
        self.pending_twins.labels(self.node, str(store)).set(int(pending))

    def fencing_failed(self) -> None:
        self.takeovers.labels(self.node, "fencing-failed").inc()

    def parts_drained(self, jobs: int) -> None:
        """Jobs this node drained in parts of another claimer's spread drain."""
        self.drained.inc(jobs)

    def takeover_finished(self, outcome: Outcome, jobs: int) -> None:
        """`jobs`: those moved into this node's gearmand (a spread's claimer: its own parts
        and the sweep; the other survivors count theirs with `parts_drained`)."""
        self.takeovers.labels(self.node, outcome.value).inc()
        self.drained.inc(jobs)
        if self._takeover_started is not None:
            self.takeover_seconds.observe(time.monotonic() - self._takeover_started)
        self._takeover_started = None
        self.takeover_start.set(0)


@dataclass(frozen=True)
class Reading:
    """What gearmand, the store and ZooKeeper answered at one scrape (None: no answer)."""

    functions: list[FunctionStatus] | None
    stores: tuple[dict[str, str] | None, ...]  # each store's `stats`, in the collector's order
    oldest: dict[str, float]  # function -> age in seconds of its oldest stored job
    paused: bool | None = None  # automatic take-over paused (None: ZooKeeper not asked)


NO_READING = Reading(None, (), {})


class LiveCollector(Collector):
    """Reads gearmand's `status`, memcached's `stats` (of each of the node's stores: one, or two
    twins) and the pause flag when scraped (cached for a second; the oldest jobs' ages for
    `OLDEST_EVERY`)."""

    def __init__(
        self, node: str, gearman: Endpoint, stores: tuple[Endpoint, ...], timeout: float
    ) -> None:
        self.node = node
        self.gearman = gearman
        self.stores = stores
        self.timeout = timeout
        self.coord: Coordination | None = None
        self.store_errors = 0  # the agent's failed store requests, and the scrapes' own
        self.lock = threading.Lock()  # one reading at a time
        self.errors_lock = threading.Lock()  # never held while waiting for gearmand or memcached
        self.reading = NO_READING
        self.read_at = float("-inf")
        self.oldest_at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        return self._families(NO_READING, 0, samples=False)

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            now = time.monotonic()
            if now - self.read_at >= REFRESH_EVERY:
                functions = self._functions()
                self.reading = Reading(
                    functions, self._store_stats(), self._oldest(functions, now), self._paused()
                )
                self.read_at = time.monotonic()
            reading = self.reading
        with self.errors_lock:
            errors = self.store_errors
        return self._families(reading, errors)

    def _functions(self) -> list[FunctionStatus] | None:
        """The functions of the first STATUS_NAMES_BYTES of `status`: a client registering many
        names makes neither a scrape nor its series grow without bound."""
        try:
            return AdminClient(self.gearman, timeout=self.timeout).status_head()[0]
        except GearctlError:
            return None

    def _store_stats(self) -> tuple[dict[str, str] | None, ...]:
        return tuple(self._stats(store) for store in self.stores)

    def _stats(self, store: Endpoint) -> dict[str, str] | None:
        try:
            with Store(store, timeout=self.timeout) as probe:
                return probe.stats()
        except GearctlError:
            self.store_error()
            return None

    def _oldest(self, functions: list[FunctionStatus] | None, now: float) -> dict[str, float]:
        """Ages of the oldest stored jobs of functions with queued jobs (walked at most once per
        OLDEST_EVERY; in between the last ages grow with the clock)."""
        queued = {f.name for f in functions or [] if f.queued}
        if not queued:
            self.oldest_at = float("-inf")
            return {}
        if now - self.oldest_at < OLDEST_EVERY:
            return {name: age + now - self.read_at for name, age in self.reading.oldest.items()
                    if name in queued}  # fmt: skip
        ages: dict[str, float] = {}
        for store in self.stores:  # a job waits in either twin: the oldest of both counts
            try:
                found = oldest_job_ages(store, queued, self.timeout)
            except GearctlError:
                self.store_error()
                continue
            for name, age in found.items():
                ages[name] = max(age, ages.get(name, age))
        self.oldest_at = now
        return ages

    def _paused(self) -> bool | None:
        if self.coord is None or not self.coord.connected:
            return None
        try:
            return self.coord.takeover_paused()
        except GearctlError:
            return None

    def store_error(self) -> None:
        with self.errors_lock:
            self.store_errors += 1

    def _families(self, reading: Reading, errors: int, samples: bool = True) -> Iterator[Metric]:
        node = self.node
        up = GaugeMetricFamily(
            "gearctl_gearmand_up",
            "1 if gearmand answers its admin `status` within the check timeout (its first MiB: "
            "the per-function series stop there)",
            labels=["node"],
        )
        queued = GaugeMetricFamily(
            "gearctl_queued_jobs",
            "Jobs gearmand holds per function (its `status` total, running ones included)",
            labels=["node", "function"],
        )
        running = GaugeMetricFamily(
            "gearctl_running_jobs",
            "Jobs gearmand has handed to workers and not seen finish, per function",
            labels=["node", "function"],
        )
        workers = GaugeMetricFamily(
            "gearctl_function_workers",
            "Workers registered with gearmand per function",
            labels=["node", "function"],
        )
        oldest = GaugeMetricFamily(
            "gearctl_oldest_job_age_seconds",
            "Age of the oldest job stored for a function with queued jobs (from the store's "
            "keys; refreshed every 10 s)",
            labels=["node", "function"],
        )
        per_store = ["node", "store"]  # store: the memcached's address (twin stores: two)
        store_up = GaugeMetricFamily(
            "gearctl_store_up",
            "1 if the node's store (memcached) answers `stats`",
            labels=per_store,
        )
        items = GaugeMetricFamily(
            "gearctl_store_items", "Items in the node's store (curr_items)", labels=per_store
        )
        used = GaugeMetricFamily(
            "gearctl_store_bytes", "Bytes used in the node's store (bytes)", labels=per_store
        )
        limit = GaugeMetricFamily(
            "gearctl_store_limit_bytes",
            "Memory limit of the node's store (limit_maxbytes); a full store refuses jobs",
            labels=per_store,
        )
        store_errors = CounterMetricFamily(
            "gearctl_store_errors",
            "Failed requests of the agent (and of scrapes) to the node's store (memcached)",
            labels=["node"],
        )
        paused = GaugeMetricFamily(
            "gearctl_takeover_paused",
            "1 while automatic take-over is paused (`gearctl takeover pause`)",
            labels=["node"],
        )
        session_timeout = GaugeMetricFamily(
            "gearctl_zookeeper_session_timeout_seconds",
            "The session timeout ZooKeeper granted the agent at its latest connect",
            labels=["node"],
        )
        if samples:
            store_errors.add_metric([node], errors)
            up.add_metric([node], 0 if reading.functions is None else 1)
            for function in reading.functions or []:
                queued.add_metric([node, function.name], function.queued)
                running.add_metric([node, function.name], function.running)
                workers.add_metric([node, function.name], function.workers)
            for name, age in sorted(reading.oldest.items()):
                oldest.add_metric([node, name], round(age, 1))
            for store, stats in zip(self.stores, reading.stores, strict=True):
                labels = [node, str(store)]
                store_up.add_metric(labels, 0 if stats is None else 1)
                if stats is not None:
                    items.add_metric(labels, float(stats.get("curr_items", "nan")))
                    used.add_metric(labels, float(stats.get("bytes", "nan")))
                    limit.add_metric(labels, float(stats.get("limit_maxbytes", "nan")))
            if reading.paused is not None:
                paused.add_metric([node], int(reading.paused))
            granted = self.coord.negotiated_timeout if self.coord else None
            if granted is not None:
                session_timeout.add_metric([node], granted)
        yield from (up, queued, running, workers, oldest, store_up, items, used, limit,
                    store_errors, paused, session_timeout)  # fmt: skip
