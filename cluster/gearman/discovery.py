"""Which gearmand servers accept jobs now: a fixed list, or the cluster's members in ZooKeeper.

`ZooKeeperServers` follows `/gearctl/<cluster>/members/<node>` with watches
(cluster.coord.MemberFollower). A server is live while its member record's state is `serving`
or `restoring` (a restoring gearmand already serves new jobs). The watch callbacks only copy
records into a dict under a lock and call the `on_change` callbacks, which must not block
either (the Worker's one writes a byte to a socketpair). When the ZooKeeper
session is suspended or lost the last known list is kept: it is the best guess, and clients
fail over on connection errors anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from cluster.coord import Coordination, MemberRecord, SessionState, connect
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError

log = logging.getLogger(__name__)


class ServerSource(Protocol):
    def servers(self) -> list[Endpoint]:
        """Live servers, in a stable order."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from any thread; it must not block) when the list may have changed."""
        ...

    def close(self) -> None: ...


def parse_servers(servers: Iterable[str | Endpoint] | str) -> list[Endpoint]:
    """`["h:p", ...]`, `"h:p,h:p"` or Endpoints -> Endpoints (port 4730 when none is given)."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    endpoints = [
        item if isinstance(item, Endpoint) else Endpoint.parse(item, default_port=4730)
        for item in items
        if isinstance(item, Endpoint) or item.strip()
    ]
    if not endpoints:
        raise ConfigError("no Gearman server given: pass at least one host:port")
    return list(dict.fromkeys(endpoints))  # drop duplicates, keep order


class StaticServers:
    """A fixed server list; every server counts as live (clients skip the ones that fail)."""

    def __init__(self, servers: Iterable[str | Endpoint] | str) -> None:
        self._servers = parse_servers(servers)

    def servers(self) -> list[Endpoint]:
        return list(self._servers)

    def add_listener(self, callback: Callable[[], None]) -> None:
        pass  # never changes

    def close(self) -> None:
        pass


class ZooKeeperServers:
    """Live servers of `cluster`, followed through ZooKeeper watches (cluster.coord).

    Pass `coord` to share an already started session (it is then not closed by `close`).
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        coord: Coordination | None = None,
        connect_timeout: float = 5.0,
        session_timeout: float = 10.0,
    ) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._own_session = coord is None
        self.coord = coord or connect(
            hosts, cluster, connect_timeout, session_timeout=session_timeout
        )
        self.coord.add_listener(self._on_state)
        self.follower = self.coord.follow_members(self._notify)

    def servers(self) -> list[Endpoint]:
        records = sorted(self.follower.members().values(), key=lambda r: r.node)
        live = []
        for record in records:
            if not record.live:
                continue
            try:
                live.append(Endpoint.parse(record.gearman))
            except ConfigError:
                log.warning("member %s has a bad gearman address %r", record.node, record.gearman)
        return live

    def members(self) -> dict[str, MemberRecord]:
        return self.follower.members()

    def add_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        self.follower.close()
        if self._own_session:
            self.coord.close()

    # Called on kazoo's threads: they must not block.

    def _on_state(self, state: SessionState) -> None:
        if state != SessionState.CONNECTED:
            log.info("ZooKeeper session %s: keeping the last known server list", state.lower())

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:
                log.exception("server list listener failed")


def server_source(
    servers: Iterable[str | Endpoint] | str | None, zookeeper: str | None, cluster: str
) -> ServerSource:
    if (servers is None) == (zookeeper is None):
        raise ConfigError("give either servers=[...] or zookeeper='host:port,...', not both")
    if servers is not None:
        return StaticServers(servers)
    assert zookeeper is not None
    return ZooKeeperServers(zookeeper, cluster)
