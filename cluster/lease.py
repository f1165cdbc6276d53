"""Store ownership in ZooKeeper, and the fencing rule that keeps it safe.

A store's owner is an ephemeral znode `stores/<store>/owner`: it belongs to one ZooKeeper session
and vanishes when that session ends, which is what lets a peer take the store over. Whether a
znode is ours is decided by its `ephemeralOwner` (the session id), never by the data in it.

Fencing (design invariant 4): an agent that may have lost its session must stop its gearmand
before a peer can take the store over; `SessionGuard` decides when, from its own heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from cluster.errors import ConfigError
from cluster.sdnotify import WatchdogPing

log = logging.getLogger("gearctl.lease")

SERVE = "serve"
DRAIN = "drain"


@dataclass(frozen=True)
class Owner:
    node: str
    purpose: str
    session: int

    def encode(self) -> bytes:
        record = {
            "node": self.node,
            "purpose": self.purpose,
            "session": f"{self.session:#x}",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
        }
        return json.dumps(record).encode()

    @classmethod
    def decode(cls, data: bytes, session: int) -> Owner:
        raw = json.loads(data.decode() or "{}")
        return cls(node=str(raw.get("node", "?")), purpose=str(raw.get("purpose", "?")),
                   session=session)  # fmt: skip


class StoreLease:
    """Ownership of one store by this ZooKeeper session."""

    def __init__(self, zk: KazooClient, path: str, node: str, purpose: str) -> None:
        self.zk = zk
        self.path = path
        self.node = node
        self.purpose = purpose

    def current_owner(self) -> Owner | None:
        try:
            data, stat = self.zk.get(self.path)
        except NoNodeError:
            return None
        return Owner.decode(data, stat.ephemeralOwner)

    def held(self) -> bool:
        owner = self.current_owner()
        return owner is not None and owner.session == self.zk.client_id[0]

    def try_acquire(self) -> Owner | None:
        """Take the lease if it is free or already ours; otherwise return who holds it."""
        me = Owner(self.node, self.purpose, self.zk.client_id[0])
        try:
            self.zk.create(self.path, me.encode(), ephemeral=True, makepath=True)
            return None
        except NodeExistsError:
            owner = self.current_owner()
            if owner is None or owner.session == me.session:
                return None if owner else self.try_acquire()
            return owner

    def acquire(self, stop: threading.Event, on_wait: Callable[[Owner], None]) -> bool:
        """Block until the lease is ours (True) or `stop` is set (False)."""
        while not stop.is_set():
            holder = self.try_acquire()
            if holder is None:
                return True
            on_wait(holder)
            released = threading.Event()
            if self.zk.exists(self.path, watch=_setter(released)) is None:
                continue
            released.wait(1.0)
        return False

    def release(self) -> None:
        """Delete the lease if this session holds it."""
        try:
            _, stat = self.zk.get(self.path)
            if stat.ephemeralOwner == self.zk.client_id[0]:
                self.zk.delete(self.path, version=stat.version)
        except NoNodeError:
            pass


class NegotiatedTimeout:
    """The session timeout the server granted, in seconds (kazoo 2.11 keeps it to itself: its
    connection's `_connect` returns 2/3 of it as the read timeout; we record that)."""

    def __init__(self, zk: KazooClient) -> None:
        self.read_timeout_ms: float | None = None
        connection = zk._connection
        connect = connection._connect

        def recording(*args: object) -> tuple[float, float]:
            read_timeout, connect_timeout = connect(*args)
            self.read_timeout_ms = read_timeout
            return read_timeout, connect_timeout

        connection._connect = recording

    def seconds(self) -> float | None:
        return None if self.read_timeout_ms is None else self.read_timeout_ms * 1.5 / 1000


def _setter(event: threading.Event) -> Callable[[object], None]:
    """A kazoo watch callback that only sets `event` (watches must not block)."""
    return lambda _watched: event.set()


class SessionGuard:
    """Calls `fence` before our ZooKeeper session may expire, and `reconnected` once it is back.

    The server expires a session one timeout after the last request it received from us. The
    guard sends its own heartbeat (an `exists` every HEARTBEAT seconds) and remembers when the
    last *answered* one was sent: the server heard from us no earlier than that. It fences once
    `session_timeout - safety_margin` has passed since then, and at once on LOST. (kazoo's own
    SUSPENDED state is no clock for this: kazoo times it from its last send, and every request
    postpones it, so it can arrive after the session has already expired.)

    kazoo calls `listener` and the heartbeat callbacks on its own thread, which must never
    block: they only record; a small thread of ours decides and fences.
    """

    HEARTBEAT = 0.2
    POLL = HEARTBEAT / 4  # the loop runs 4 times a heartbeat: a fence is at most this late

    def __init__(
        self,
        zk: KazooClient,
        session_timeout: float,
        safety_margin: float,
        fence: Callable[[str], None],
        reconnected: Callable[[bool], None],
        watchdog: WatchdogPing | None = None,
    ) -> None:
        if safety_margin < 4 * self.POLL:
            raise ConfigError(
                f"zookeeper.safety_margin = {safety_margin} must be at least {4 * self.POLL:g}s "
                f"(4 x the session guard's poll interval of {self.POLL:g}s): the fence, and "
                "behind it the watchdog's ping, may each be one poll late"
            )
        self.zk = zk
        self.safety_margin = safety_margin
        self.fence_after = session_timeout - safety_margin
        self.negotiated = NegotiatedTimeout(zk)
        self.session_id: int | None = None
        self.watchdog = watchdog
        self.fence = fence
        self.reconnected = reconnected
        self.state = KazooState.CONNECTED
        self.session_lost = False
        self.fenced_at: float | None = None
        self.last_answered = time.monotonic()  # send time of the last answered heartbeat
        self.last_sent = 0.0
        self.in_flight = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="session-guard", daemon=True)

    def start(self) -> None:
        """Start guarding the session the (connected) client holds now."""
        self.last_answered = time.monotonic()
        self._new_session()
        self.thread.start()

    def _new_session(self) -> None:
        """Take the session id, and fence on ZooKeeper's negotiated timeout (a server grants
        at most 20 x tickTime, whatever was asked for)."""
        self.session_id = self._current_session()
        timeout = self.negotiated.seconds()
        if timeout is not None and timeout - self.safety_margin != self.fence_after:
            self.fence_after = timeout - self.safety_margin
            log.warning("ZooKeeper negotiated a session timeout of %.1fs: fencing after %.1fs "
                        "without an answer", timeout, self.fence_after)  # fmt: skip

    def _current_session(self) -> int | None:
        client_id = self.zk.client_id
        return client_id[0] if client_id else None

    def stop(self) -> None:
        self.stopping.set()

    def listener(self, state: str) -> None:
        if state == KazooState.LOST:
            self.session_lost = True
        self.state = state

    def _beat(self) -> None:
        sent = time.monotonic()
        if self.in_flight or self.state != KazooState.CONNECTED:
            return
        if sent - self.last_sent < self.HEARTBEAT:
            return  # the loop runs 4 times a heartbeat (fence precision), beats only once
        self.last_sent = sent
        self.in_flight = True

        def answered(result: object) -> None:
            self.in_flight = False
            if result.successful():  # type: ignore[attr-defined]
                self.last_answered = max(self.last_answered, sent)

        try:
            self.zk.exists_async("/").rawlink(answered)
        except Exception:  # the connection is closing: the next beat tries again
            self.in_flight = False

    def _run(self) -> None:
        while not self.stopping.wait(self.POLL):
            self._beat()
            self._check_replaced()
            silent = time.monotonic() - self.last_answered
            if self.fenced_at is not None:
                if self.state == KazooState.CONNECTED and self.last_answered > self.fenced_at:
                    self.fenced_at = None
                    lost, self.session_lost = self.session_lost, False
                    self.reconnected(lost)
            elif self.state == KazooState.LOST:
                self._fence("ZooKeeper session lost")
            elif silent >= self.fence_after:
                self._fence(f"no answer from ZooKeeper for {silent:.1f}s")
            if self.watchdog is not None:
                if self.fenced_at is not None:
                    self.watchdog.fenced()
                else:
                    # Between our own fence and the earliest expiry, two polls before it: the
                    # watchdog fires only if the fence did not happen, and still before expiry.
                    self.watchdog.alive(
                        self.last_answered + self.fence_after + self.safety_margin - 2 * self.POLL
                    )

    def _check_replaced(self) -> None:
        """kazoo may open a new session a few ms after LOST, before this loop sees LOST: a
        session id that changed is a lost session (fence, and register again)."""
        current = self._current_session()
        if current is None or current == self.session_id:
            return
        if self.session_id is None:  # the first session
            self._new_session()
            return
        old, self.session_lost = self.session_id, True
        if self.fenced_at is None:
            self._fence(f"ZooKeeper session {old:#x} expired and was replaced by {current:#x}")
        self._new_session()

    def _fence(self, reason: str) -> None:
        self.fenced_at = time.monotonic()
        log.error("fencing: %s", reason)
        try:
            self.fence(reason)
        except Exception:
            log.exception("fencing failed")
