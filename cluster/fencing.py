"""Fencing (design invariant 4): at most one gearmand serves a store's jobs at any time.

A store's owner is an ephemeral znode `stores/<store>/owner` (cluster.coord.StoreLease): it
belongs to one ZooKeeper session and vanishes when that session ends, which is what lets a peer
take the store over. Two sides keep that safe:
- the owner: an agent that may have lost its session stops its gearmand before a peer can take
  the store over; `SessionGuard` decides when, from its own heartbeat;
- the taker: a survivor (or `gearctl store drain`) drains a store only once its old gearmand is
  confirmed dead (`old_server_is_dead`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import psutil

from cluster.coord import Coordination, SessionState, StoreRecord
from cluster.endpoint import Endpoint

log = logging.getLogger("gearctl.fencing")


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

    def __init__(
        self,
        coord: Coordination,
        session_timeout: float,
        safety_margin: float,
        fence: Callable[[str], None],
        reconnected: Callable[[bool], None],
    ) -> None:
        self.coord = coord
        self.fence_after = session_timeout - safety_margin
        self.fence = fence
        self.reconnected = reconnected
        self.state = SessionState.CONNECTED
        self.session_lost = False
        self.fenced_at: float | None = None
        self.last_answered = time.monotonic()  # send time of the last answered heartbeat
        self.last_sent = 0.0
        self.in_flight = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="session-guard", daemon=True)

    def start(self) -> None:
        self.last_answered = time.monotonic()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def listener(self, state: SessionState) -> None:
        if state == SessionState.LOST:
            self.session_lost = True
        self.state = state

    def _beat(self) -> None:
        sent = time.monotonic()
        if self.in_flight or self.state != SessionState.CONNECTED:
            return
        if sent - self.last_sent < self.HEARTBEAT:
            return  # the loop runs 4 times a heartbeat (fence precision), beats only once
        self.last_sent = sent
        self.in_flight = True

        def answered(ok: bool) -> None:
            self.in_flight = False
            if ok:
                self.last_answered = max(self.last_answered, sent)

        try:
            self.coord.heartbeat(answered)
        except Exception:  # the connection is closing: the next beat tries again
            self.in_flight = False

    def _run(self) -> None:
        while not self.stopping.wait(self.HEARTBEAT / 4):
            self._beat()
            silent = time.monotonic() - self.last_answered
            if self.fenced_at is not None:
                if self.state == SessionState.CONNECTED and self.last_answered > self.fenced_at:
                    self.fenced_at = None
                    lost, self.session_lost = self.session_lost, False
                    self.reconnected(lost)
                continue
            if self.state == SessionState.LOST:
                self._fence("ZooKeeper session lost")
            elif silent >= self.fence_after:
                self._fence(f"no answer from ZooKeeper for {silent:.1f}s")

    def _fence(self, reason: str) -> None:
        self.fenced_at = time.monotonic()
        log.error("fencing: %s", reason)
        try:
            self.fence(reason)
        except Exception:
            log.exception("fencing failed")


def old_server_is_dead(record: StoreRecord, timeout: float = 1.0) -> tuple[bool, str]:
    """Fencing check: (True, how) if the store's last gearmand is known dead, else (False, why)."""
    if record.host == socket.gethostname() and record.gearmand_pid is not None:
        try:
            if psutil.Process(record.gearmand_pid).status() != psutil.STATUS_ZOMBIE:
                return False, f"gearmand pid {record.gearmand_pid} is still running on this host"
        except psutil.Error:
            return True, f"gearmand pid {record.gearmand_pid} is gone"
    endpoint = Endpoint.parse(record.gearman)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return False, f"gearmand {endpoint} still accepts connections"
    except ConnectionRefusedError:
        return True, f"gearmand {endpoint} refuses connections"
    except OSError as exc:
        return False, f"gearmand {endpoint} cannot be reached to confirm it is dead ({exc})"
