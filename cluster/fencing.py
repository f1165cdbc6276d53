"""Fencing (design invariant 4): at most one gearmand serves a store's jobs at any time.

A store's owner is an ephemeral znode `stores/<store>/owner` (cluster.coord.StoreLease): it
belongs to one ZooKeeper session and vanishes when that session ends, which is what lets a peer
take the store over. Two sides keep that safe:
- the owner: an agent that may have lost its session stops its gearmand before a peer can take
  the store over; `SessionGuard` decides when, from its own heartbeat;
- the taker: a survivor (or `gearctl store drain`) drains a store only once its owner's session
  expired and the take-over rule (`old_server_is_dead`) finds its old gearmand dead.
A hung agent cannot fence: its supervisor's watchdog (cluster.sdnotify, cluster.watchdog) kills
it, and its gearmand dies with it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from cluster.coord import Coordination, SessionState, StoreRecord
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError, GearctlError
from cluster.gearman.admin import AdminClient, AdminCommandError
from cluster.process import is_running
from cluster.sdnotify import WatchdogPing

log = logging.getLogger("gearctl.fencing")


class SessionGuard:
    """Calls `fence` before our ZooKeeper session may expire, and `reconnected` once it is back.

    The server expires a session one timeout after the last request it received from us. The
    guard sends its own heartbeat (an `exists` every HEARTBEAT seconds) and remembers when the
    last *answered* one was sent: the server heard from us no earlier than that. It fences once
    `negotiated timeout - safety_margin` has passed since then, at once on LOST, and at once
    when the session id changed (a LOST the poll missed). It sends the supervisor's WATCHDOG=1
    only while that proof holds (cluster.sdnotify.WatchdogPing). (kazoo's own
    SUSPENDED state is no clock for this: kazoo times it from its last send, and every request
    postpones it, so it can arrive after the session has already expired.)

    kazoo calls `listener` and the heartbeat callbacks on its own thread, which must never
    block: they only record; a small thread of ours decides and fences.
    """

    HEARTBEAT = 0.2
    POLL = HEARTBEAT / 4  # the loop's longest sleep while a heartbeat is overdue or unanswered

    def __init__(
        self,
        coord: Coordination,
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
        self.coord = coord
        self.safety_margin = safety_margin
        self.fence_after = session_timeout - safety_margin
        self.session_id = 0
        self.watchdog = watchdog
        self.fence = fence
        self.reconnected = reconnected
        self.state = SessionState.CONNECTED
        self.session_lost = False
        self.fenced_at: float | None = None
        self.last_answered = time.monotonic()  # send time of the last answered heartbeat
        self.last_sent = 0.0
        self.in_flight = False
        self.stopping = threading.Event()
        self.woken = threading.Event()  # a state change or stop: decide now
        self.thread = threading.Thread(target=self._run, name="session-guard", daemon=True)

    def start(self) -> None:
        """Start guarding the session the (connected) client holds now."""
        self.last_answered = time.monotonic()
        self._new_session()
        self.thread.start()

    def _new_session(self) -> None:
        """Take the session id, and fence on ZooKeeper's negotiated timeout (a server grants
        at most 20 x tickTime, whatever was asked for)."""
        self.session_id = self.coord.session_id
        timeout = self.coord.negotiated_timeout
        if timeout is not None and timeout - self.safety_margin != self.fence_after:
            self.fence_after = timeout - self.safety_margin
            log.warning("ZooKeeper negotiated a session timeout of %.1fs: fencing after %.1fs "
                        "without an answer", timeout, self.fence_after)  # fmt: skip

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()

    def listener(self, state: SessionState) -> None:
        if state == SessionState.LOST:
            self.session_lost = True
        self.state = state
        self.woken.set()

    def _beat(self) -> None:
        sent = time.monotonic()
        if self.in_flight or self.state != SessionState.CONNECTED:
            return
        if sent - self.last_sent < self.HEARTBEAT:
            return  # woken early (a state change): the heartbeat is not due yet
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

    def _sleep(self) -> bool:
        """Sleep until the loop has work; True once stopping. It wakes when the next heartbeat
        is due, at the fence deadline (answers only ever move it later, so waking there loses
        no precision), at the last moment the watchdog may still be pinged, and at once on a
        state change (`listener`): 5 wake-ups a second while all is well, not 20."""
        now = time.monotonic()
        beat = self.last_sent + self.HEARTBEAT
        due = [beat if beat > now else now + self.POLL]  # overdue: in flight or disconnected
        if self.fenced_at is None:
            due.append(self.last_answered + self.fence_after)
            if self.watchdog is not None and self.watchdog.seconds is not None:
                due.append(self._watchdog_deadline() - self.watchdog.seconds)
        self.woken.wait(max(0.0, min(due) - now))
        self.woken.clear()
        return self.stopping.is_set()

    def _watchdog_deadline(self) -> float:
        """Between our own fence and the earliest expiry, two polls before it: the watchdog
        fires only if the fence did not happen, and still before expiry."""
        return self.last_answered + self.fence_after + self.safety_margin - 2 * self.POLL

    def _run(self) -> None:
        while not self._sleep():
            self._beat()
            self._check_replaced()
            silent = time.monotonic() - self.last_answered
            if self.fenced_at is not None:
                if self.state == SessionState.CONNECTED and self.last_answered > self.fenced_at:
                    self.fenced_at = None
                    lost, self.session_lost = self.session_lost, False
                    self.reconnected(lost)
            elif self.state == SessionState.LOST:
                self._fence("ZooKeeper session lost")
            elif silent >= self.fence_after:
                self._fence(f"no answer from ZooKeeper for {silent:.1f}s")
            if self.watchdog is not None:
                if self.fenced_at is not None:
                    self.watchdog.fenced()
                else:
                    self.watchdog.alive(self._watchdog_deadline())

    def _check_replaced(self) -> None:
        """kazoo may open a new session a few ms after LOST, before this loop sees LOST: a
        session id that changed is a lost session (fence, and register again)."""
        current = self.coord.session_id
        if current == 0 or current == self.session_id:
            return
        if self.session_id == 0:  # the first session
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


FENCING_FAILED = "fencing failed"
SHUTDOWN_CONFIRM = 3.0  # seconds a gearmand sent admin `shutdown` has to stop answering


def old_server_is_dead(record: StoreRecord, timeout: float = 1.0) -> tuple[bool, str]:
    """The take-over rule (design invariant 4), once the owner's session expired and its owner
    znode is gone (the caller checked both): (True, how) when the store's last gearmand is
    dead, else (False, why; starting with FENCING_FAILED when it still answers).

    Refusing connections, or unreachable (timeout, no route, host unreachable): dead by the
    lease rule, its agent fenced it or its host is gone. Still answering: fencing failed
    somewhere; it gets gearmand's admin `shutdown` and is dead once it stops answering. The PID
    shortcut only where the record proves the same kernel and PID namespace, never a hostname."""
    if record.same_pid_table() and record.gearmand_pid and not is_running(record.gearmand_pid):
        return True, f"gearmand pid {record.gearmand_pid} is gone (same kernel, PID namespace)"
    endpoint = Endpoint.parse(record.gearman)
    gone = _unreachable(endpoint, timeout)
    if gone is not None:
        return True, gone + ": dead by the lease rule"
    log.error("%s: gearmand %s still accepts connections after its owner's session expired; "
              "sending it admin shutdown", FENCING_FAILED, endpoint)  # fmt: skip
    answer = "it did not stop"
    deadline = time.monotonic() + SHUTDOWN_CONFIRM
    while time.monotonic() < deadline:
        try:
            AdminClient(endpoint, timeout=timeout).shutdown()
        except AdminCommandError as exc:  # Debian's 1.1.20 has no `shutdown`: no use repeating
            answer = f"it answered {exc.code} {exc.text}".strip()
            break
        except GearctlError:
            pass
        gone = _unreachable(endpoint, timeout)
        if gone is not None:
            return True, (f"gearmand {endpoint} still answered after its owner's session "
                          f"expired ({FENCING_FAILED}): shut down over admin; {gone}")  # fmt: skip
        time.sleep(0.1)
    return False, (f"{FENCING_FAILED}: gearmand {endpoint} still answers after its owner's "
                   f"session expired, and admin shutdown did not stop it ({answer}); stop it "
                   "by hand: the take-over follows")  # fmt: skip


def _unreachable(endpoint: Endpoint, timeout: float) -> str | None:
    """How a connection to `endpoint` failed (refused, timed out, no route), None if accepted."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"gearmand {endpoint} refuses connections"
    except OSError as exc:
        return f"gearmand {endpoint} cannot be reached ({exc or 'timed out'})"
