"""The node agent: keeps one gearmand serving the node's store, and only while it owns the store.

One agent per node (systemd runs it in production, `gearctl cluster up` locally). Its loop:

    connect ZooKeeper -> register member -> own the store (wait while a peer drains it)
      -> count the store's jobs (gearmand is down, so the store is quiescent)
      -> start gearmand with a fresh key prefix g<epoch>_ (its own lossy replay loads nothing)
      -> restore every job stored under older prefixes (cluster.restore) -> serving
      -> health checks; on death or hang: back to "count" (with backoff)

A `SessionGuard` thread fences (kills gearmand) when the ZooKeeper session may be lost; once the
session is back the loop restarts from "own the store".
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType

from cluster import sdnotify
from cluster.backoff import RestartPolicy
from cluster.config import AgentConfig
from cluster.coord import Coordination, MemberRecord, NodeState, Owner, Purpose, StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, LaunchError
from cluster.fencing import SessionGuard
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.gearman.admin import AdminClient, is_serving
from cluster.gearmand_server import GearmandLaunch, hashtable_buckets, io_threads, start_gearmand
from cluster.health import HangWatch, Health, check_gearmand
from cluster.metrics import AgentMetrics
from cluster.process import is_program_on, kill_pid, log_tail, read_pidfile, stop_pid, wait_until
from cluster.restore import RestoreIncomplete, RestoreReport, restore
from cluster.store import Store, StoreIdentity
from cluster.storeprobe import store_writable
from cluster.takeover import TakeoverWatcher

log = logging.getLogger("gearctl.agent")

GEARMAND_READY_TIMEOUT = 10.0
NAMES_WARN_EVERY = 60.0  # seconds between warnings that function names were left unpublished
REFUSED_RETRY_EVERY = 30.0  # seconds between retries of jobs every gearmand refused (full store)
DEFERRED_RETRY_EVERY = 1.0  # seconds between tries of jobs whose function name was unknown


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.fenced = threading.Event()
        self.session_renewed = threading.Event()  # set when a LOST session was replaced
        self.gearmand_lock = threading.Lock()
        self.gearmand: subprocess.Popen[bytes] | None = None
        self.policy = RestartPolicy()
        self.store = Store(config.store, timeout=config.check_timeout * 2)
        self.store_identity: StoreIdentity | None = None  # memcached's, at the last check
        self.metrics = AgentMetrics(config.node, config.gearman, config.store, config.check_timeout)
        self.coord = Coordination.new(
            config.zookeeper_hosts, config.cluster, config.session_timeout, config.zookeeper_auth
        )
        self.metrics.watch_coordination(self.coord)
        self.guard = SessionGuard(
            self.coord, config.session_timeout, config.safety_margin, self._fence,
            self._on_reconnected,
            watchdog=sdnotify.WatchdogPing(config.session_timeout - config.safety_margin),
        )  # fmt: skip
        self.lease = self.coord.lease(config.node, config.node, Purpose.SERVE)
        self.functions = FunctionRegistry(self.coord)
        self._names_warned_at = float("-inf")
        self.takeovers = TakeoverWatcher(
            self.coord, config.node, config.gearman, self._may_drain, self.stopping,
            metrics=self.metrics,
        )  # fmt: skip
        self.record = MemberRecord(
            node=config.node,
            gearman=str(config.gearman),
            store=str(config.store),
            agent_pid=os.getpid(),
            gearmand_pid=None,
            state=NodeState.STARTING,
        )

    @property
    def gearmand_pid_path(self) -> Path:
        return self.config.run_dir / "gearmand.pid"

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics.serve(self.config.metrics)  # a port in use is logged; gearman goes on
        self._stop_leftover_gearmand()
        self._connect_zookeeper()
        self.guard.start()
        try:
            if self._tree_open():
                return 1
            self._register()
            sdnotify.notify("READY=1")  # the supervisor's watchdog runs from now on
            self.takeovers.start()
            while not self.stopping.is_set():
                try:
                    self._serve_once()
                except GearctlError as exc:
                    # ZooKeeper or the store went away mid-step: report, and start over from a
                    # stopped gearmand (the next count of the store needs it quiescent).
                    log.error("%s: %s", type(exc).__name__, exc)
                    self.metrics.count_error(exc)
                    self._stop_gearmand(kill=True)
                    self.stopping.wait(1.0)
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping.set()

    def _shutdown(self) -> None:
        self.guard.stop()
        self.metrics.stop()
        self._stop_gearmand()
        try:
            self.lease.release()
            self.coord.close()  # closing the session removes the ephemeral member record
        except Exception:
            log.exception("closing the ZooKeeper session failed")
        log.info("agent %s stopped", self.config.node)

    # -- one incarnation of gearmand ----------------------------------------------------------

    def _serve_once(self) -> None:
        """Own the store, start gearmand, restore, then watch it until it dies or is fenced."""
        # A fence and the new session after it may both have passed while this thread was
        # blocked (a store check into a partition): register again all the same.
        if self.fenced.is_set() or self.session_renewed.is_set():
            self._wait_unfenced()
            return
        if not self._own_store():
            return
        try:
            expected = self.store.curr_items()
        except GearctlError as exc:
            self.metrics.count_error(exc)
            self._failed(f"store {self.config.store} unreachable: {exc}", NodeState.STORE_LOST)
            return
        proc, prefix = self._start_gearmand()
        if proc is None:
            return
        if self._restore(proc, expected, prefix):
            self._watch(proc, prefix)

    def _own_store(self) -> bool:
        def waiting(owner: Owner) -> None:
            log.warning("store %s is held by %s (%s); waiting", self.config.node, owner.node,
                        owner.purpose)  # fmt: skip
            self._update(state=NodeState.WAITING)

        return self.lease.acquire(self.stopping, waiting) and not self.fenced.is_set()

    def _start_gearmand(self) -> tuple[subprocess.Popen[bytes] | None, str]:
        epoch = self.coord.next_epoch(self.config.node)
        launch = GearmandLaunch(
            endpoint=self.config.gearman,
            store=self.config.store,
            prefix=f"g{epoch}_",
            log_path=self.config.log_dir / "gearmand.log",
            pid_path=self.gearmand_pid_path,
            threads=self.config.threads or io_threads(),
            buckets=hashtable_buckets(self.config.expected_queue_depth),
        )
        try:
            with self.gearmand_lock:
                if self.fenced.is_set():
                    return None, launch.prefix
                proc = self.gearmand = start_gearmand(launch)
            wait_until(
                lambda: is_serving(self.config.gearman, self.config.check_timeout),
                timeout=GEARMAND_READY_TIMEOUT,
                what=f"gearmand on {self.config.gearman}",
                alive=lambda: proc.poll() is None,
                log_path=launch.log_path,
            )
        except LaunchError as exc:
            self._stop_gearmand()
            self._failed(str(exc))
            return None, launch.prefix
        log.info("gearmand pid %d serving on %s, prefix %s", proc.pid, launch.endpoint,
                 launch.prefix)  # fmt: skip
        self._describe_store(proc.pid)
        return proc, launch.prefix

    def _describe_store(self, gearmand_pid: int) -> None:
        """Tell peers where our store and gearmand are, for a take-over after our death."""
        record = StoreRecord.here(str(self.config.store), str(self.config.gearman), gearmand_pid)
        self.coord.describe_store(self.config.node, record)

    def _may_drain(self) -> bool:
        """Peers' stores are drained only into a gearmand that serves, under a live session."""
        return self.record.state == NodeState.SERVING and not self.fenced.is_set()

    def _restore(self, proc: subprocess.Popen[bytes], expected: int, prefix: str) -> bool:
        """Restore until every old job is back (but deferred ones); False if we must stop."""
        self._update(state=NodeState.RESTORING, gearmand_pid=proc.pid, deferred_jobs=0,
                     refused_jobs=0)  # fmt: skip
        # gearmand is health-checked while it restores too: a hang must not leave the node
        # advertised live while every try times out.
        watch = HangWatch(proc.pid, self.config.gearman, self.config.check_timeout,
                          self.config.check_interval, self.config.hang_checks)  # fmt: skip
        while expected:
            log.info("restoring %d stored jobs", expected)
            try:
                report = restore(
                    self.store,
                    self.config.gearman,
                    expected=expected,
                    keep_prefix=prefix,
                    known_functions=self._known_functions(),
                    progress=_log_progress,
                    should_continue=lambda: (
                        not (self.stopping.is_set() or self.fenced.is_set()) and watch.ok()
                    ),
                    overflow=self._peers_serving,
                )
            except RestoreIncomplete as exc:
                log.error("%s", exc)
                if proc.poll() is not None or self.stopping.is_set() or self.fenced.is_set():
                    return proc.poll() is not None  # a dead gearmand is handled by _watch
                if not watch.ok():
                    log.error("gearmand pid %d is %s during the restore after %d checks; killing "
                              "it", proc.pid, watch.last.value, watch.failures)  # fmt: skip
                    self._stop_gearmand(kill=True)
                    return True  # _watch finds it gone and restarts it
                expected = exc.report.left_in_store
                self.metrics.moved(exc.report.moved)
                self.stopping.wait(0.5)
                continue
            log.info("restored %d jobs in %.2fs (%d skipped, %d deferred, %d refused, %d to "
                     "other nodes)", report.moved, report.seconds, len(report.skipped),
                     report.deferred, len(report.refused), report.overflowed)  # fmt: skip
            self.metrics.restored(report)
            self._update(deferred_jobs=report.deferred, refused_jobs=len(report.refused))
            break
        self._update(state=NodeState.SERVING)
        return True

    def _peers_serving(self) -> list[Endpoint]:
        """Other members' gearmands that serve: where jobs our own store cannot hold go."""
        try:
            members = self.coord.members()
        except GearctlError as exc:
            log.warning("no peers to send refused jobs to: %s", exc)
            return []
        return [Endpoint.parse(m.gearman) for name, m in members.items()
                if name != self.config.node and m.state == NodeState.SERVING]  # fmt: skip

    def _known_functions(self) -> set[str]:
        return known_in_cluster(self.functions, self.config.gearman, self.config.check_timeout)

    def _restore_deferred(self, proc: subprocess.Popen[bytes], prefix: str) -> None:
        """Try the deferred and refused jobs again: function names may have become known
        since, and the store or a peer may have room now."""
        try:
            report = restore(
                self.store,
                self.config.gearman,
                expected=self.record.deferred_jobs + self.record.refused_jobs,
                keep_prefix=prefix,
                known_functions=self._known_functions(),
                overflow=self._peers_serving,
            )
        except RestoreIncomplete as exc:
            log.warning("deferred or refused jobs: %s", exc)
            return
        if report.moved:
            log.info("restored %d waiting jobs; %d still wait for their function name, %d are "
                     "refused", report.moved, report.deferred, len(report.refused))  # fmt: skip
            self.metrics.moved(report.moved)
            self._update(deferred_jobs=report.deferred, refused_jobs=len(report.refused))

    def _watch(self, proc: subprocess.Popen[bytes], prefix: str) -> None:
        """Health-check gearmand until it dies, hangs, or we are fenced or stopped."""
        failures = 0
        retry_deferred_at = 0.0
        admin = AdminClient(self.config.gearman, timeout=self.config.check_timeout, keep_open=True)
        while not self.stopping.is_set() and not self.fenced.is_set():
            check = check_gearmand(proc.pid, admin)
            if check.health is Health.GONE:
                break
            failures = 0 if check.health is Health.SERVING else failures + 1
            if failures >= self.config.hang_checks:
                log.error("gearmand pid %d is %s after %d checks; killing it", proc.pid,
                          check.health.value, failures)  # fmt: skip
                break
            self._publish_functions(check.functions)
            if not self._store_ok():  # gearmand keeps its queue in memory: never restart it
                self.stopping.wait(self.config.check_interval)
                continue
            waiting = self.record.deferred_jobs + self.record.refused_jobs
            if waiting and time.monotonic() >= retry_deferred_at:
                self._restore_deferred(proc, prefix)
                every = DEFERRED_RETRY_EVERY if self.record.deferred_jobs else REFUSED_RETRY_EVERY
                retry_deferred_at = time.monotonic() + every
            self.stopping.wait(self.config.check_interval)
        admin.close()
        if self.stopping.is_set() or self.fenced.is_set():
            return
        self._stop_gearmand(kill=True)
        delay = self.policy.record_death(time.monotonic())
        log.warning("gearmand pid %d died (status %s); restarting in %.2fs", proc.pid,
                    proc.returncode, delay)  # fmt: skip
        if self.policy.crash_looping:
            self._failed(f"gearmand crash loop: {len(self.policy.deaths)} deaths")
        self._update(state=NodeState.RESTARTING, restarts=self.record.restarts + 1,
                     gearmand_pid=None)  # fmt: skip
        self.stopping.wait(delay)

    def _store_ok(self) -> bool:
        """Report a lost store (state `store-lost`) and its return; True while it is fine.

        gearmand outlives its store: it keeps the queued jobs in memory but refuses new
        background jobs (QUEUE_ERROR), and a worker's WORK_COMPLETE re-queues the job (its key
        cannot be deleted). `store-lost` takes the node off the live servers, so clients and
        workers that follow them go elsewhere; it is `serving` again once gearmand writes to
        the store again (cluster.storeprobe), which memcached answering does not yet mean."""
        if self.record.state != NodeState.STORE_LOST:
            lost = self._store_lost()
            if lost is None:
                return True
            how, why = lost
            log.error("store %s %s: gearmand keeps its queued jobs in memory but cannot "
                      "persist new ones; waiting for the store", self.config.store,
                      why)  # fmt: skip
            self.metrics.store_lost(how)
            self._update(state=NodeState.STORE_LOST)
            return False
        if not (self._store_lost() is None and store_writable(
                self.config.gearman, self.config.node, self.config.check_timeout)):  # fmt: skip
            return False
        log.warning("store %s is back (empty if it was restarted): gearmand writes to it "
                    "again", self.config.store)  # fmt: skip
        self._update(state=NodeState.SERVING)
        return True

    def _store_lost(self) -> tuple[str, str] | None:
        """(how, why) when the store does not answer, or answers as another memcached than at
        the last check (it restarted in between: empty, though it answers); None if fine."""
        try:
            identity = self.store.identity()
        except GearctlError as exc:
            return "down", f"lost ({exc})"
        previous, self.store_identity = self.store_identity, identity
        if previous is not None and identity.restarted_since(previous):
            return "restarted", (f"restarted between two checks (memcached pid {previous.pid} "
                                 f"-> {identity.pid}): it is empty")  # fmt: skip
        return None

    def _publish_functions(self, names: tuple[str, ...]) -> None:
        """Record new function names in ZooKeeper (only names not published yet cost a write)."""
        try:
            left_out = self.functions.publish(names)
        except GearctlError as exc:
            log.warning("could not publish function names: %s", exc)
            return
        if left_out:
            self.metrics.names_left_out(left_out)
            now = time.monotonic()
            if now >= self._names_warned_at + NAMES_WARN_EVERY:
                self._names_warned_at = now
                log.warning("function names not published to ZooKeeper (bound hit): %s; a "
                            "client registers many or long names?", dict(left_out))  # fmt: skip

    def _stop_gearmand(self, kill: bool = False) -> None:
        with self.gearmand_lock:
            proc, self.gearmand = self.gearmand, None
        if proc is None:
            return
        if kill:
            kill_pid(proc.pid)
        else:
            stop_pid(proc.pid)
        proc.wait()

    def _stop_leftover_gearmand(self) -> None:
        """A gearmand left by an earlier agent on this node must not keep serving beside ours."""
        pid = read_pidfile(self.gearmand_pid_path)
        if pid and is_program_on(pid, "gearmand", self.config.gearman.port):
            log.warning("stopping gearmand pid %d left by an earlier agent", pid)
            stop_pid(pid)

    def _failed(self, reason: str, state: NodeState = NodeState.FAILED) -> None:
        tail = log_tail(self.config.log_dir / "gearmand.log", 5)
        log.error("%s\nlast lines of gearmand.log:\n%s", reason, tail)
        self._update(state=state, gearmand_pid=None)
        self.stopping.wait(self.policy.max_delay if self.policy.crash_looping else 1.0)

    # -- fencing ------------------------------------------------------------------------------

    def _fence(self, reason: str) -> None:
        """Called by the SessionGuard thread: stop serving the store before a peer may own it."""
        with self.gearmand_lock:
            self.fenced.set()
            if self.gearmand is not None:
                kill_pid(self.gearmand.pid)
        log.error("fenced (%s): gearmand killed", reason)
        self.record = self.record.with_changes(state=NodeState.FENCED, gearmand_pid=None)
        self.metrics.fenced()

    def _on_reconnected(self, session_was_lost: bool) -> None:
        if session_was_lost:
            self.session_renewed.set()
        self.fenced.clear()

    def _wait_unfenced(self) -> None:
        self._stop_gearmand(kill=True)
        while self.fenced.is_set() and not self.stopping.is_set():
            self.stopping.wait(0.1)
        if self.session_renewed.is_set() and not self.stopping.is_set():
            self.session_renewed.clear()
            log.info("new ZooKeeper session: registering again")
            self._register()
        self._update(state=NodeState.STARTING)

    # -- ZooKeeper ----------------------------------------------------------------------------

    def _connect_zookeeper(self) -> None:
        """Connect, retrying with backoff: ZooKeeper being down is not a reason to crash."""
        self.coord.add_listener(self.guard.listener)
        self.coord.add_listener(self.metrics.zookeeper_state)
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self.coord.start(timeout=max(5.0, self.config.session_timeout))
                return
            except GearctlError as exc:
                log.error("ZooKeeper %s unreachable (%s); retrying in %.1fs",
                          self.config.zookeeper_hosts, exc, delay)  # fmt: skip
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _tree_open(self) -> bool:
        """With credentials, refuse a tree whose znodes anyone may change (created before the
        credentials were set): anyone could then take a store's ownership or plant records."""
        if self.config.zookeeper_auth is None or self.stopping.is_set():
            return False
        open_znodes = self.coord.open_znodes()
        if open_znodes:
            log.critical(
                "refusing to run: %d znode(s) of cluster %s are writable by anyone (created "
                "before ZooKeeper credentials were set), e.g. %s; close them with `gearctl acl "
                "fix --zookeeper %s --cluster %s --auth-file FILE` (the agents' credentials)",
                len(open_znodes), self.config.cluster, open_znodes[0],
                self.config.zookeeper_hosts, self.config.cluster,
            )  # fmt: skip
        return bool(open_znodes)

    def _register(self) -> None:
        """Create our ephemeral member record, waiting out one left by an earlier session."""
        while not self.stopping.is_set():
            try:
                if self.coord.register(self.record):
                    return
                log.warning("member %s still held by an earlier session; waiting",
                            self.config.node)  # fmt: skip
                self.stopping.wait(self.config.session_timeout / 4)
            except Exception as exc:
                log.error("cannot register member %s: %s", self.config.node, exc)
                self.stopping.wait(1.0)

    def _update(self, **changes: object) -> None:
        self.record = self.record.with_changes(**changes)
        self.metrics.record(self.record)
        try:
            self.coord.update_member(self.record)
        except Exception as exc:
            log.warning("could not update the member record: %s", exc)


def _log_progress(report: RestoreReport) -> None:
    log.info("restore: %d of %d jobs moved (%.0f jobs/s)", report.moved, report.expected,
             report.moved / max(report.seconds, 1e-6))  # fmt: skip
