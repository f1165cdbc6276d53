"""The node's gearmand as the agent sees it: start one, check it, stop it, fence it.

`fence` may be called from the session guard's thread: it kills gearmand at once and refuses
every start until `unfence`, so a gearmand being started while the fence happens cannot serve.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

from cluster.config import AgentConfig
from cluster.endpoint import Endpoint
from cluster.gearman.admin import AdminClient, is_serving
from cluster.gearmand_server import GearmandLaunch, hashtable_buckets, io_threads, start_gearmand
from cluster.health import Check, HangWatch, check_gearmand
from cluster.process import is_program_on, kill_pid, read_pidfile, stop_pid, wait_until
from cluster.storeprobe import store_writable

log = logging.getLogger("gearctl.agent")

READY_TIMEOUT = 10.0


class GearmandLauncher:
    """Runs at most one gearmand for the node `config` describes."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin: AdminClient | None = None  # kept open between health checks of `proc`
        self.fenced = False

    @property
    def pid_path(self) -> Path:
        return self.config.run_dir / "gearmand.pid"

    def start(self, prefix: str, store: Endpoint) -> subprocess.Popen[bytes] | None:
        """Start gearmand with key prefix `prefix`, writing memcached `store` (one of the node's
        stores), and wait until it serves; None while fenced.
        LaunchError (nothing left running) when it does not come up. Call it from the agent's
        main thread: gearmand dies with the thread that started it (cluster.gearmand_server)."""
        launch = GearmandLaunch(
            endpoint=self.config.gearman,
            store=store,
            prefix=prefix,
            log_path=self.config.log_dir / "gearmand.log",
            pid_path=self.pid_path,
            threads=self.config.threads or io_threads(),
            buckets=hashtable_buckets(self.config.expected_queue_depth),
        )
        with self.lock:
            if self.fenced:
                return None
            proc = self.proc = start_gearmand(launch)
        try:
            wait_until(
                lambda: is_serving(self.config.gearman, self.config.check_timeout),
                timeout=READY_TIMEOUT,
                what=f"gearmand on {self.config.gearman}",
                alive=lambda: proc.poll() is None,
                log_path=launch.log_path,
            )
        except BaseException:
            self.stop()
            raise
        log.info("gearmand pid %d serving on %s, prefix %s", proc.pid, launch.endpoint, prefix)
        return proc

    def check(self, proc: subprocess.Popen[bytes]) -> Check:
        """One health check, on an admin connection kept open for this gearmand (a check is
        then its round trips, no connect and close)."""
        if self.admin is None:
            self.admin = AdminClient(
                self.config.gearman, timeout=self.config.check_timeout, keep_open=True
            )
        return check_gearmand(proc.pid, self.admin)

    def hang_watch(self, proc: subprocess.Popen[bytes]) -> HangWatch:
        """Health checks while something else runs (a restore): a hang must not leave the node
        advertised live while every try times out."""
        config = self.config
        return HangWatch(
            proc.pid,
            config.gearman,
            config.check_timeout,
            config.check_interval,
            config.hang_checks,
        )

    def writes_store(self) -> bool:
        """Does gearmand persist jobs in its store (again)? See cluster.storeprobe."""
        return store_writable(self.config.gearman, self.config.node, self.config.check_timeout)

    def stop(self, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`) the running gearmand, if any, and reap it."""
        with self.lock:
            proc, self.proc = self.proc, None
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        if proc is None:
            return
        if kill:
            kill_pid(proc.pid)
        else:
            stop_pid(proc.pid)
        proc.wait()

    def fence(self) -> None:
        """Kill gearmand now and refuse to start one until `unfence` (any thread)."""
        with self.lock:
            self.fenced = True
            if self.proc is not None:
                kill_pid(self.proc.pid)

    def unfence(self) -> None:
        with self.lock:
            self.fenced = False

    def stop_leftover(self) -> None:
        """A gearmand left by an earlier agent on this node must not keep serving beside ours."""
        pid = read_pidfile(self.pid_path)
        if pid and is_program_on(pid, "gearmand", self.config.gearman.port):
            log.warning("stopping gearmand pid %d left by an earlier agent", pid)
            stop_pid(pid)
