"""The agent process: the state machine's real dependencies, its loop on the main thread, and
beside it the session guard (fencing) and the take-over watcher.

One agent per node (systemd runs it in production, `gearctl cluster up` locally).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from cluster import sdnotify
from cluster.agent.gearmand import GearmandLauncher
from cluster.agent.machine import AgentMachine
from cluster.agent.states import State
from cluster.config import AgentConfig
from cluster.coord import Coordination
from cluster.errors import GearctlError
from cluster.fencing import SessionGuard
from cluster.functions import FunctionRegistry, known_in_cluster
from cluster.metrics import AgentMetrics
from cluster.store import Store
from cluster.takeover import TakeoverWatcher

log = logging.getLogger("gearctl.agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics(
            config.node, config.gearman, config.stores, config.check_timeout
        )
        self.coord = Coordination.new(
            config.zookeeper_hosts, config.cluster, config.session_timeout, config.zookeeper_auth
        )
        # The main loop's (and a scrape's) ZooKeeper requests wait at most half a session
        # timeout: kazoo would hold them as long as a partition lasts. The guard and take-overs
        # use the session as is.
        main_loop = self.coord.bounded(config.session_timeout / 2)
        self.metrics.watch_coordination(main_loop)
        self.launcher = GearmandLauncher(config)
        functions = FunctionRegistry(main_loop)
        self.machine = AgentMachine(
            config,
            main_loop,
            self.launcher,
            Store(config.store, timeout=config.check_timeout * 2),
            twin=Store(config.twin, timeout=config.check_timeout * 2) if config.twin else None,
            metrics=self.metrics,
            known_functions=lambda: known_in_cluster(
                functions, config.gearman, config.check_timeout
            ),
            publish_functions=functions.publish,
        )
        self.guard = SessionGuard(
            self.coord,
            config.session_timeout,
            config.safety_margin,
            self.machine.fence,
            self.machine.unfence,
            watchdog=sdnotify.WatchdogPing(config.session_timeout - config.safety_margin),
        )
        self.takeovers = TakeoverWatcher(
            self.coord,
            config.node,
            config.gearman,
            self.machine.may_drain,
            self.machine.stopping,
            metrics=self.metrics,
            spread=config.takeover_spread,
        )

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics.serve(self.config.metrics)  # a port in use is logged; gearman goes on
        self.launcher.stop_leftover()
        self._connect_zookeeper()
        self.guard.start()
        watching = False
        try:
            if self._tree_open():
                return 1
            while self.machine.run_cycle() is not State.STOPPED:
                if self.machine.registered and not watching:
                    sdnotify.notify("READY=1")  # the supervisor's watchdog runs from now on
                    self.takeovers.start()
                    watching = True
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.machine.stop()

    def _connect_zookeeper(self) -> None:
        """Connect, retrying with backoff: ZooKeeper being down is not a reason to crash."""
        self.coord.add_listener(self.guard.listener)
        self.coord.add_listener(self.metrics.zookeeper_state)
        delay = 0.5
        while not self.machine.stopping.is_set():
            try:
                self.coord.start(timeout=max(5.0, self.config.session_timeout))
                return
            except GearctlError as exc:
                log.error(
                    "ZooKeeper %s unreachable (%s); retrying in %.1fs",
                    self.config.zookeeper_hosts,
                    exc,
                    delay,
                )
                self.machine.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _tree_open(self) -> bool:
        """With credentials, refuse a tree whose znodes anyone may change (created before the
        credentials were set): anyone could then take a store's ownership or plant records."""
        if self.config.zookeeper_auth is None or self.machine.stopping.is_set():
            return False
        open_znodes = self.coord.open_znodes()
        if open_znodes:
            log.critical(
                "refusing to run: %d znode(s) of cluster %s are writable by anyone (created "
                "before ZooKeeper credentials were set), e.g. %s; close them with `gearctl acl "
                "fix --zookeeper %s --cluster %s --auth-file FILE` (the agents' credentials)",
                len(open_znodes),
                self.config.cluster,
                open_znodes[0],
                self.config.zookeeper_hosts,
                self.config.cluster,
            )
        return bool(open_znodes)

    def _shutdown(self) -> None:
        self.guard.stop()
        self.metrics.stop()
        self.launcher.stop()
        try:
            self.machine.lease.release()
            self.coord.close()  # closing the session removes the ephemeral member record
        except Exception:
            log.exception("closing the ZooKeeper session failed")
        log.info("agent %s stopped", self.config.node)
