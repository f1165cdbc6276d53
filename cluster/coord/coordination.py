"""Every read and write of gearctl's znodes, on one ZooKeeper session (design §3).

Which process writes which znode is the core safety argument of the system; it is all here
(and tabled in docs/architecture.md). Callers get typed records (cluster.coord.records) and
`CoordinationError` (a GearctlError) instead of kazoo's exceptions; kazoo's callbacks run on
its own thread, so every callback given here must only record or signal, never block.

kazoo queues a request made while it reconnects and sends it once a connection is back: a
plain kazoo call can wait as long as a partition lasts. A `bounded` view of a session waits at
most its `request_timeout` for the requests it makes (the agent's main loop: member record,
registration, store record, epoch, function names, its own store's lease, a stale spread plan
of its own store; the metrics' pause flag) and raises CoordinationTimeout after that. The
request itself stays queued: a timed-out write is not assumed failed, it may land later, but
only on the same session (after an expiry kazoo fails it). Every bounded write is one that may
land late: records are rewritten whole and a session's requests land in order, so the last
write wins (but a create whose parent is missing is retried behind what was sent meanwhile:
only a fresh cluster's first member); a member record or lease znode held by our own session is
ours (`register`, `StoreLease.try_acquire`); an epoch skipped is harmless; function names are
only ever added; a stale plan is ended, and its take-over record finished, by the node holding
its store for serving, so no claimer can write a newer plan before the session ends. Take-over
records and spread plans (sequence znodes, transactions) are created unbounded: a late one
would be an orphan.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.interfaces import IAsyncResult
from kazoo.recipe.watchers import ChildrenWatch
from kazoo.security import ACL, Permissions

from cluster.coord.errors import (
    CoordinationError,
    CoordinationRefused,
    CoordinationTimeout,
    translated,
)
from cluster.coord.lease import StoreLease
from cluster.coord.members import MemberFollower
from cluster.coord.paths import ROOT, ClusterPaths
from cluster.coord.records import (
    MemberEntry,
    MemberRecord,
    Owner,
    PartRecord,
    PauseRecord,
    Purpose,
    SpreadPlan,
    StoreRecord,
    TakeoverRecord,
)
from cluster.zkclient import ZkCredentials, make_client


class SessionState(enum.StrEnum):
    """The ZooKeeper connection's state, as kazoo reports it."""

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


@dataclass
class _Granted:
    """What the server granted the session, shared by the session's bounded views."""

    read_timeout_ms: float | None = None


class Coordination:
    """One ZooKeeper session and the znodes of one cluster."""

    def __init__(self, zk: KazooClient, cluster: str, hosts: str) -> None:
        self.zk = zk
        self.paths = ClusterPaths(cluster)
        self.hosts = hosts
        self.request_timeout: float | None = None  # None: wait as long as kazoo does
        self._granted = _Granted()
        # one kazoo watcher per (store, callback): kazoo keeps a set, so a scan that asks
        # again every second adds nothing
        self._plan_watchers: dict[tuple[str, Callable[[], None]], Callable[[Any], None]] = {}
        self._record_negotiated_timeout()

    @classmethod
    def new(
        cls,
        hosts: str,
        cluster: str,
        session_timeout: float = 10.0,
        credentials: ZkCredentials | None = None,
    ) -> Coordination:
        """Not connected yet: `start` (or `start_in_background`) it, `close` it."""
        return cls(make_client(hosts, session_timeout, credentials), cluster, hosts)

    # -- the session ----------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Connect; CoordinationError if ZooKeeper does not answer (`start` may be retried)."""
        try:
            self.zk.start(timeout=timeout)
        except Exception as exc:
            raise CoordinationError(
                f"ZooKeeper {self.hosts} does not answer within {timeout}s: {exc}"
            ) from exc

    def start_in_background(self, wait: float) -> None:
        """Connect without failing: wait up to `wait` s, then let kazoo keep trying."""
        self.zk.start_async().wait(wait)

    def close(self) -> None:
        """End the session (its ephemeral znodes go with it) and the client."""
        self.zk.stop()
        self.zk.close()

    @property
    def connected(self) -> bool:
        return bool(self.zk.connected)

    def _record_negotiated_timeout(self) -> None:
        """kazoo 2.11 keeps the session timeout the server granted to itself: its connection's
        `_connect` returns 2/3 of it as the read timeout (ms) at each (re)connection."""
        connection = self.zk._connection
        connect = connection._connect

        def recording(*args: object) -> tuple[float, float]:
            read_timeout, connect_timeout = connect(*args)
            self._granted.read_timeout_ms = read_timeout
            return read_timeout, connect_timeout

        connection._connect = recording

    @property
    def negotiated_timeout(self) -> float | None:
        """The session timeout ZooKeeper granted, in seconds (None before the first session)."""
        read_timeout = self._granted.read_timeout_ms
        return None if read_timeout is None else read_timeout * 1.5 / 1000

    def bounded(self, request_timeout: float) -> Coordination:
        """This session, with every request made through the view (reads and writes named in
        the module docstring) waiting at most `request_timeout` seconds for its answer."""
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, not {request_timeout}")
        view = copy.copy(self)
        view.request_timeout = request_timeout
        return view

    def answer(self, request: IAsyncResult) -> Any:
        """The result of a kazoo `*_async` request, waited for at most `request_timeout`;
        CoordinationTimeout after that (the request stays queued: see the module docstring)."""
        try:
            return request.get(timeout=self.request_timeout)
        except self.zk.handler.timeout_exception:
            raise CoordinationTimeout(
                f"ZooKeeper {self.hosts} did not answer within {self.request_timeout}s"
            ) from None

    @property
    def session_id(self) -> int:
        """This session's id (0 while there is none; no znode is owned by session 0)."""
        client_id = self.zk.client_id
        return int(client_id[0]) if client_id else 0

    def add_listener(self, callback: Callable[[SessionState], None]) -> None:
        """`callback(state)` on every change of the connection's state (on kazoo's thread)."""
        self.zk.add_listener(lambda state: callback(SessionState(state)))

    def heartbeat(self, answered: Callable[[bool], None]) -> None:
        """Send one request to the server; `answered(ok)` is called (kazoo's thread) on reply."""
        self.zk.exists_async("/").rawlink(lambda result: answered(bool(result.successful())))

    # -- members/<node> (each agent its own, ephemeral) -----------------------------------

    @translated
    def register(self, record: MemberRecord) -> bool:
        """Create our member record; False while an earlier session's record still exists.
        A record our own session holds (a create that timed out landed after all) is ours:
        it is rewritten with `record`."""
        path = self.paths.member(record.node)
        try:
            self.answer(self.zk.create_async(path, record.encode(), ephemeral=True, makepath=True))
            return True
        except NodeExistsError:
            entry = self.member_entry(record.node)
            if entry is None or entry.session != self.session_id:
                return False
        self.update_member(record)
        return True

    @translated
    def update_member(self, record: MemberRecord) -> None:
        self.answer(self.zk.set_async(self.paths.member(record.node), record.encode()))

    def members(self) -> dict[str, MemberRecord]:
        """Every member record now in ZooKeeper, by node name (unreadable ones are left out)."""
        return {name: entry.record for name, entry in self.member_entries().items()}

    @translated
    def member_entries(self) -> dict[str, MemberEntry]:
        """Every member record now in ZooKeeper with its session, by node name."""
        members: dict[str, MemberEntry] = {}
        for name in self._children(self.paths.members):
            entry = self.member_entry(name)
            if entry is not None:
                members[name] = entry
        return members

    @translated
    def member_entry(self, node: str) -> MemberEntry | None:
        """`node`'s member record and session; None if it has none (or one we cannot read)."""
        try:
            data, stat = self.answer(self.zk.get_async(self.paths.member(node)))
            return MemberEntry(MemberRecord.decode(data), stat.ephemeralOwner, stat.ctime / 1000)
        except (NoNodeError, ValueError, TypeError):
            return None  # the member left while we looked, or wrote a record we cannot read

    @translated
    def on_members_changed(self, callback: Callable[[], None]) -> None:
        """`callback()` (kazoo's thread) whenever a member joins or leaves."""
        self.zk.ensure_path(self.paths.members)

        def changed(_children: list[str]) -> bool:
            callback()
            return True

        ChildrenWatch(self.zk, self.paths.members, changed)

    def follow_members(self, on_change: Callable[[], None]) -> MemberFollower:
        """A live copy of every member record, kept by watches; `on_change` when it changes."""
        return MemberFollower(self, on_change)

    # -- /gearctl (read-only: which clusters exist; operator commands check names) --------

    @translated
    def clusters(self) -> list[str]:
        """Names of every cluster in this ZooKeeper, whatever cluster this session is on."""
        return sorted(self._children(ROOT))

    # -- stores/<node> (its agent), epoch (its agent, compare-and-set) ---------------------

    @translated
    def describe_store(self, store: str, record: StoreRecord) -> None:
        self.answer(self.zk.ensure_path_async(self.paths.store(store)))
        self.answer(self.zk.set_async(self.paths.store(store), record.encode()))

    @translated
    def stores(self) -> list[str]:
        """Every store (node) the cluster has had: each agent describes its own at start."""
        return sorted(self._children(self.paths.stores))

    @translated
    def store_record(self, store: str) -> StoreRecord | None:
        """None when the store is not in the cluster; ValueError/KeyError if never described."""
        try:
            return StoreRecord.decode(self.answer(self.zk.get_async(self.paths.store(store)))[0])
        except NoNodeError:
            return None

    @translated
    def next_epoch(self, store: str) -> int:
        """Increment the store's incarnation counter (compare-and-set) and return it."""
        path = self.paths.store_epoch(store)
        while True:
            try:
                data, stat = self.answer(self.zk.get_async(path))
            except NoNodeError:
                try:
                    self.answer(self.zk.create_async(path, b"1", makepath=True))
                    return 1
                except NodeExistsError:
                    continue
            epoch = int(data or b"0") + 1
            try:
                self.answer(self.zk.set_async(path, str(epoch).encode(), version=stat.version))
                return epoch
            except BadVersionError:
                time.sleep(0.01)

    @translated
    def epoch(self, store: str) -> tuple[int, float] | None:
        """(epoch, when it was last set, epoch seconds), or None before the first start."""
        try:
            data, stat = self.answer(self.zk.get_async(self.paths.store_epoch(store)))
            return int(data or b"0"), stat.mtime / 1000
        except (NoNodeError, ValueError):
            return None

    @translated
    def orphans(self, exclude: str) -> list[str]:
        """Stores (but `exclude`) whose node has no member record and which nobody owns."""
        members = set(self._children(self.paths.members))
        return [
            store
            for store in sorted(self._children(self.paths.stores))
            if store != exclude
            and store not in members
            and self.zk.exists(self.paths.store_owner(store)) is None
        ]

    # -- stores/<node>/owner (the store's agent, or its drainer; ephemeral) ---------------

    def owner(self, store: str) -> Owner | None:
        return self.owner_at(self.paths.store_owner(store))

    @translated
    def owner_at(self, path: str) -> Owner | None:
        """The holder of the lease znode `path` (a store's or a spread part's)."""
        try:
            data, stat = self.answer(self.zk.get_async(path))
        except NoNodeError:
            return None
        try:
            return Owner.decode(data, stat.ephemeralOwner)
        except ValueError:
            return Owner("?", "?", stat.ephemeralOwner)

    def lease(self, store: str, node: str, purpose: Purpose) -> StoreLease:
        return StoreLease(self, store, node, purpose)

    # -- stores/<node>/spread, parts/<i> (a spread drain: its claimer, its part drainers) --

    @translated
    def spread_plan(self, store: str) -> SpreadPlan | None:
        """The store's spread plan; None when there is none (or one this version cannot read)."""
        try:
            data = self.answer(self.zk.get_async(self.paths.store_spread(store)))[0]
            return SpreadPlan.decode(data)
        except (NoNodeError, ValueError, KeyError, TypeError):
            return None

    @translated
    def spread_stores(self) -> list[str]:
        """Stores (nodes) with a spread plan: where survivors help drain parts."""
        return [
            store
            for store in sorted(self._children(self.paths.stores))
            if self.zk.exists(self.paths.store_spread(store)) is not None
        ]

    @translated
    def on_spread_planned(self, store: str, callback: Callable[[], None]) -> None:
        """`callback()` (kazoo's thread) once the store's plan is written or removed, or now
        if it exists already: a survivor that lost the claim waits for the parts."""
        watcher = self._plan_watchers.setdefault((store, callback), lambda _event: callback())
        if self.zk.exists(self.paths.store_spread(store), watch=watcher):
            callback()

    @translated
    def start_spread(self, store: str, plan: SpreadPlan) -> None:
        """Write the plan and every part's empty record in one transaction: a part record
        exists exactly while its plan does. Only the store's claimer (owner znode, purpose
        drain) calls it, after `end_spread` removed a stale plan's leftovers."""
        empty = PartRecord(moved=(0,) * len(plan.stores)).encode()
        transaction = self.zk.transaction()
        transaction.create(self.paths.store_spread(store), plan.encode())
        transaction.create(self.paths.store_parts(store))
        for index in range(plan.parts):
            transaction.create(self.paths.store_part(store, index), empty)
        failed = [r for r in transaction.commit() if isinstance(r, Exception)]
        if failed:
            raise CoordinationError(f"spread plan of store {store} not written: {failed[0]!r}")

    @translated
    def count_spread(self, store: str, plan: SpreadPlan) -> None:
        """Rewrite the plan with its counts (step two, by its claimer): survivors watching it
        (`on_spread_planned`) are told."""
        self.zk.set(self.paths.store_spread(store), plan.encode())

    @translated
    def spread_part(self, store: str, index: int) -> PartRecord | None:
        """Part `index`'s record; None once its plan ended."""
        try:
            data = self.answer(self.zk.get_async(self.paths.store_part(store, index)))[0]
            return PartRecord.decode(data)
        except NoNodeError:
            return None

    @translated
    def update_part(self, store: str, index: int, record: PartRecord) -> None:
        """Rewrite part `index`'s record (its drainer, holding the part's lease)."""
        self.zk.set(self.paths.store_part(store, index), record.encode())

    def part_lease(self, store: str, index: int, node: str) -> StoreLease:
        return StoreLease(self, store, node, Purpose.DRAIN, part=index)

    @translated
    def end_spread(self, store: str) -> None:
        """Remove the plan, then the parts, each part's lease with it (the claimer, once every
        part is done; or a stale plan's leftovers: a later claimer, the node back to serve).
        Plan first: who reads no plan starts no part."""
        parts = self.paths.store_parts(store)
        self._delete(self.paths.store_spread(store))
        for index in self._children(parts):
            for child in self._children(f"{parts}/{index}"):
                self._delete(f"{parts}/{index}/{child}")
            self._delete(f"{parts}/{index}")
        self._delete(parts)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(NoNodeError):
            self.answer(self.zk.delete_async(path))

    # -- functions/<name> (any agent; never removed) -------------------------------------

    @translated
    def function_names(self) -> set[str]:
        return {unquote(child) for child in self._children(self.paths.functions)}

    @translated
    def add_function(self, name: str) -> None:
        with contextlib.suppress(NodeExistsError):
            path = f"{self.paths.functions}/{quote(name, safe='')}"
            self.answer(self.zk.create_async(path, makepath=True))

    # -- takeovers/t-<seq> (a drainer: survivor or `store drain`) -------------------------

    @translated
    def record_takeover(self, takeover: TakeoverRecord) -> str:
        """Write a new take-over record; returns its path, for `update_takeover`."""
        path = f"{self.paths.takeovers}/t-"
        return str(self.zk.create(path, takeover.encode(), sequence=True, makepath=True))

    @translated
    def update_takeover(self, path: str, takeover: TakeoverRecord) -> None:
        self.answer(self.zk.set_async(path, takeover.encode()))

    @translated
    def takeover_at(self, path: str) -> TakeoverRecord | None:
        """The take-over record at `path` (a spread plan's); None if gone or unreadable."""
        try:
            return TakeoverRecord.decode(self.answer(self.zk.get_async(path))[0])
        except (NoNodeError, ValueError, TypeError):
            return None

    @translated
    def takeover_history(self) -> list[TakeoverRecord]:
        """Every take-over, oldest first (running ones have outcome RUNNING)."""
        names = sorted(self._children(self.paths.takeovers))
        records = (self.takeover_at(f"{self.paths.takeovers}/{name}") for name in names)
        return [record for record in records if record is not None]

    # -- takeover-paused (the operator) ---------------------------------------------------

    @translated
    def takeover_paused(self) -> bool:
        """Is automatic take-over paused (`gearctl takeover pause`)? Manual drains still run."""
        return self.answer(self.zk.exists_async(self.paths.takeover_paused)) is not None

    @translated
    def pause_takeover(self, record: PauseRecord) -> bool:
        """Pause automatic take-over; False if it was paused already."""
        try:
            self.zk.create(self.paths.takeover_paused, record.encode(), makepath=True)
            return True
        except NodeExistsError:
            return False

    @translated
    def resume_takeover(self) -> bool:
        """Resume automatic take-over; False if it was not paused."""
        try:
            self.zk.delete(self.paths.takeover_paused)
            return True
        except NoNodeError:
            return False

    def _children(self, path: str) -> list[str]:
        try:
            return list(self.answer(self.zk.get_children_async(path)))
        except NoNodeError:
            return []

    # -- ACLs of the whole tree -----------------------------------------------------------

    @translated
    def open_znodes(self) -> list[str]:
        """The cluster's znodes that anyone may change, delete or add children to
        (`world:anyone` with more than READ), parents first: what a tree created before the
        credentials were set keeps. [] when the tree does not exist yet."""
        return [path for path, acl in self._acls() if _open_to_anyone(acl)]

    @translated
    def close_znodes(self) -> list[str]:
        """Give every open znode this session's ACL (its credentials everything, the world
        READ); returns the paths changed. CoordinationRefused without credentials, or where a
        znode's ACL does not let this identity change it."""
        acl = self.zk.default_acl
        if not acl:
            raise CoordinationRefused("closing the ACLs needs the cluster's credentials")
        closed = []
        for path, current in self._acls():
            if _open_to_anyone(current):
                with contextlib.suppress(NoNodeError):  # an ephemeral znode gone meanwhile
                    self.zk.set_acls(path, acl)
                    closed.append(path)
        return closed

    def _acls(self) -> Iterator[tuple[str, list[ACL]]]:
        """(path, ACL) of the cluster's root and every znode below it, parents first."""
        pending = [self.paths.root]
        while pending:
            path = pending.pop()
            try:
                acl, _ = self.zk.get_acls(path)
            except NoNodeError:
                continue
            yield path, acl
            children = sorted(self._children(path), reverse=True)
            pending.extend(f"{path}/{child}" for child in children)


def _open_to_anyone(acl: list[ACL]) -> bool:
    return any(entry.id.scheme == "world" and entry.perms & ~Permissions.READ for entry in acl)


def connect(
    hosts: str,
    cluster: str,
    timeout: float = 5.0,
    credentials: ZkCredentials | None = None,
    session_timeout: float | None = None,
) -> Coordination:
    """A started session (closed again and CoordinationError if ZooKeeper does not answer
    within `timeout`); its session timeout is `timeout` unless given."""
    coord = Coordination.new(hosts, cluster, session_timeout or timeout, credentials)
    try:
        coord.start(timeout)
    except CoordinationError:
        coord.close()
        raise
    return coord


@contextlib.contextmanager
def session(
    hosts: str,
    cluster: str,
    timeout: float = 5.0,
    credentials: ZkCredentials | None = None,
    session_timeout: float | None = None,
) -> Iterator[Coordination]:
    """A started session for the block; closed (its ephemeral znodes removed) on exit."""
    coord = connect(hosts, cluster, timeout, credentials, session_timeout)
    try:
        yield coord
    finally:
        coord.close()
