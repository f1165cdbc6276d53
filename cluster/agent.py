"""The node agent: runs one gearmand on the node's store and keeps it serving.

One agent per node (systemd runs it in production, `gearctl cluster up` locally). It
- starts gearmand on the node's memcached store with a fresh incarnation key prefix,
- registers the node in ZooKeeper as an ephemeral member record (addresses, pids, state),
- restarts gearmand when it exits, and stops it when the agent is told to stop.
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

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from cluster import membership
from cluster.admin import is_serving
from cluster.config import AgentConfig
from cluster.errors import LaunchError
from cluster.gearmand_server import GearmandLaunch, hashtable_buckets, io_threads, start_gearmand
from cluster.membership import MemberRecord
from cluster.process import is_program_on, is_running, read_pidfile, stop_pid, wait_until
from cluster.zkpaths import ClusterPaths

log = logging.getLogger("gearctl.agent")

GEARMAND_READY_TIMEOUT = 10.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.paths = ClusterPaths(config.cluster)
        self.stopping = threading.Event()
        self.gearmand: subprocess.Popen[bytes] | None = None
        self.zk = KazooClient(hosts=config.zookeeper_hosts, timeout=config.session_timeout)
        self.record = MemberRecord(
            node=config.node,
            gearman=str(config.gearman),
            store=str(config.store),
            agent_pid=os.getpid(),
            gearmand_pid=None,
            state=membership.STARTING,
        )

    @property
    def gearmand_pid_path(self) -> Path:
        return self.config.run_dir / "gearmand.pid"

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover_gearmand()
        self._connect_zookeeper()
        try:
            self._register()
            while not self.stopping.is_set():
                if self.gearmand is None or self.gearmand.poll() is not None:
                    self._restart_gearmand()
                self.stopping.wait(self.config.check_interval)
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping.set()

    def _shutdown(self) -> None:
        if self.gearmand is not None:
            stop_pid(self.gearmand.pid)
            self.gearmand.wait()
        try:
            self.zk.stop()  # closing the session removes the ephemeral member record
            self.zk.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.exception("closing the ZooKeeper session failed")
        log.info("agent %s stopped", self.config.node)

    # -- gearmand -----------------------------------------------------------------------------

    def _stop_leftover_gearmand(self) -> None:
        """A gearmand left by an earlier agent on this node must not keep serving beside ours."""
        pid = read_pidfile(self.gearmand_pid_path)
        if pid and is_running(pid) and is_program_on(pid, "gearmand", self.config.gearman.port):
            log.warning("stopping gearmand pid %d left by an earlier agent", pid)
            stop_pid(pid)

    def _restart_gearmand(self) -> None:
        if self.gearmand is not None:
            status = self.gearmand.returncode
            log.warning("gearmand pid %d exited with status %s", self.gearmand.pid, status)
            self._update(state=membership.RESTARTING, restarts=self.record.restarts + 1)
        epoch = self._next_epoch()
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
            self.gearmand = start_gearmand(launch)
            proc = self.gearmand
            wait_until(
                lambda: is_serving(self.config.gearman, self.config.check_timeout),
                timeout=GEARMAND_READY_TIMEOUT,
                what=f"gearmand on {self.config.gearman}",
                alive=lambda: proc.poll() is None,
                log_path=launch.log_path,
            )
        except LaunchError as exc:
            log.error("%s", exc)
            self._update(state=membership.FAILED, gearmand_pid=None)
            self.stopping.wait(1.0)
            return
        log.info("gearmand pid %d serving on %s, prefix %s", proc.pid, launch.endpoint, launch.prefix)
        self._update(state=membership.SERVING, gearmand_pid=proc.pid)

    # -- ZooKeeper ----------------------------------------------------------------------------

    def _connect_zookeeper(self) -> None:
        """Connect, retrying with backoff: ZooKeeper being down is not a reason to crash."""
        self.zk.add_listener(self._on_zk_state)
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self.zk.start(timeout=max(5.0, self.config.session_timeout))
                return
            except Exception as exc:  # noqa: BLE001 - kazoo raises its own timeout type
                log.error("ZooKeeper %s unreachable (%s); retrying", self.config.zookeeper_hosts, exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _on_zk_state(self, state: str) -> None:
        # kazoo calls this on its own thread: log only, never block here.
        if state != KazooState.CONNECTED:
            log.warning("ZooKeeper session %s", state.lower())

    def _register(self) -> None:
        """Create our ephemeral member record, waiting out one left by an earlier session."""
        path = self.paths.member(self.config.node)
        while not self.stopping.is_set():
            try:
                self.zk.create(path, self.record.encode(), ephemeral=True, makepath=True)
                return
            except NodeExistsError:
                log.warning("member %s still held by an earlier session; waiting", path)
                self.stopping.wait(self.config.session_timeout / 4)

    def _update(self, **changes: object) -> None:
        self.record = self.record.with_changes(**changes)
        try:
            self.zk.set(self.paths.member(self.config.node), self.record.encode())
        except Exception:  # noqa: BLE001 - the watchdog goes on without ZooKeeper
            log.exception("could not update the member record")

    def _next_epoch(self) -> int:
        """Increment the store's incarnation counter (compare-and-set) and return it."""
        path = self.paths.store_epoch(self.config.node)
        while True:
            try:
                data, stat = self.zk.get(path)
            except NoNodeError:
                try:
                    self.zk.create(path, b"1", makepath=True)
                    return 1
                except NodeExistsError:
                    continue
            epoch = int(data or b"0") + 1
            try:
                self.zk.set(path, str(epoch).encode(), version=stat.version)
                return epoch
            except BadVersionError:
                time.sleep(0.01)

