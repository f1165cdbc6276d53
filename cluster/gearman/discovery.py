"""Which gearmand servers accept jobs now: a fixed list, or the cluster's members in ZooKeeper.

`ZooKeeperServers` follows `/gearctl/<cluster>/members/<node>` with kazoo watches: a ChildrenWatch
on the members folder and a DataWatch per member. A server is live while its member record's
state is `serving` or `restoring` (a restoring gearmand already serves new jobs). The watch
callbacks only copy records into a dict under a lock and call the `on_change` callbacks, which
must not block either (the Worker's one writes a byte to a socketpair). When the ZooKeeper
session is suspended or lost the last known list is kept: it is the best guess, and clients
fail over on connection errors anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from cluster import membership
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError, GearctlError
from cluster.membership import MemberRecord
from cluster.zkpaths import ClusterPaths

log = logging.getLogger(__name__)

LIVE_STATES = frozenset({membership.SERVING, membership.RESTORING})
"""Member states whose gearmand accepts jobs."""


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
    """Live servers of `cluster`, followed through ZooKeeper watches.

    Pass `zk` to share an already started KazooClient (it is then not stopped by `close`).
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        zk: KazooClient | None = None,
        connect_timeout: float = 5.0,
        session_timeout: float = 10.0,
    ) -> None:
        self.paths = ClusterPaths(cluster)
        self._lock = threading.Lock()
        self._members: dict[str, MemberRecord] = {}
        self._watched: set[str] = set()  # members with a DataWatch
        self._listeners: list[Callable[[], None]] = []
        self._children_watch: ChildrenWatch | None = None
        self._closed = False
        self._own_zk = zk is None
        self.zk = zk or KazooClient(hosts=hosts, timeout=session_timeout)
        if self._own_zk:
            try:
                self.zk.start(timeout=connect_timeout)
            except Exception as exc:
                self.zk.close()
                raise GearctlError(
                    f"ZooKeeper {hosts} does not answer within {connect_timeout}s: {exc}"
                ) from exc
        self.zk.add_listener(self._on_state)
        # A DataWatch works on a missing node; the ChildrenWatch starts once the folder exists.
        DataWatch(self.zk, self.paths.members, self._on_members_folder)

    def servers(self) -> list[Endpoint]:
        with self._lock:
            records = sorted(self._members.values(), key=lambda r: r.node)
        live = []
        for record in records:
            if record.state not in LIVE_STATES:
                continue
            try:
                live.append(Endpoint.parse(record.gearman))
            except ConfigError:
                log.warning("member %s has a bad gearman address %r", record.node, record.gearman)
        return live

    def members(self) -> dict[str, MemberRecord]:
        with self._lock:
            return dict(self._members)

    def add_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        self._closed = True
        self.zk.remove_listener(self._on_state)
        if self._own_zk:
            self.zk.stop()
            self.zk.close()

    # kazoo callbacks: they run on kazoo's threads and must not block.

    def _on_state(self, state: str) -> None:
        if state != KazooState.CONNECTED:
            log.info("ZooKeeper session %s: keeping the last known server list", state.lower())

    def _on_members_folder(self, data: bytes | None, stat: object) -> bool | None:
        if self._closed:
            return False
        if stat is not None and self._children_watch is None:
            self._children_watch = ChildrenWatch(self.zk, self.paths.members, self._on_children)
            return False  # the folder is never deleted while the cluster exists
        return None

    def _on_children(self, children: list[str]) -> bool | None:
        if self._closed:
            return False
        with self._lock:
            for gone in set(self._members) - set(children):
                self._members.pop(gone, None)
            new = set(children) - self._watched
            self._watched |= new
        for node in sorted(new):
            DataWatch(self.zk, self.paths.member(node), self._member_watcher(node))
        self._notify()
        return None

    def _member_watcher(self, node: str) -> Callable[[bytes | None, object], bool | None]:
        def on_data(data: bytes | None, stat: object) -> bool | None:
            if self._closed:
                return False
            with self._lock:
                if data is None:
                    self._members.pop(node, None)
                    self._watched.discard(node)
                else:
                    try:
                        self._members[node] = MemberRecord.decode(data)
                    except (ValueError, TypeError) as exc:
                        log.warning("member %s: unreadable record: %s", node, exc)
                        self._members.pop(node, None)
            self._notify()
            return False if data is None else None  # a deleted member: stop watching it

        return on_data

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
