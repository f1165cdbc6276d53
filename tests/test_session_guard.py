"""SessionGuard's heartbeat, on a fake clock and a fake coordination session (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from cluster import fencing, sdnotify
from cluster.coord import Coordination
from cluster.errors import ConfigError
from cluster.fencing import SessionGuard


class FakeZooKeeper:
    """Answers every heartbeat at once (or never, while `silent`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.silent = False
        self.session_id = 0x100
        self.negotiated_timeout: float | None = 4.0

    def heartbeat(self, answered: Callable[[bool], None]) -> None:
        self.sent += 1
        if not self.silent:
            answered(True)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(fencing.time, "monotonic", lambda: now[0])
    return now


def test_one_heartbeat_per_interval_and_its_send_time_counts(clock: list[float]) -> None:
    zk = FakeZooKeeper()
    guard = SessionGuard(zk, 4.0, 0.3, lambda _reason: None, lambda _lost: None)  # type: ignore[arg-type]
    for step in range(4):  # the guard's loop runs 4 times per heartbeat
        clock[0] = 1000.0 + step * SessionGuard.HEARTBEAT / 4
        guard._beat()
    assert zk.sent == 1
    assert guard.last_answered == 1000.0
    clock[0] = 1000.0 + SessionGuard.HEARTBEAT
    guard._beat()
    assert zk.sent == 2
    assert guard.last_answered == 1000.0 + SessionGuard.HEARTBEAT


def test_an_unanswered_heartbeat_is_not_sent_again(clock: list[float]) -> None:
    zk = FakeZooKeeper()
    zk.silent = True
    guard = SessionGuard(zk, 4.0, 0.3, lambda _reason: None, lambda _lost: None)  # type: ignore[arg-type]
    guard._beat()
    clock[0] += 10 * SessionGuard.HEARTBEAT
    guard._beat()
    assert zk.sent == 1  # still in flight: the fence clock runs from the last answered send
    assert guard.last_answered < clock[0] - 9 * SessionGuard.HEARTBEAT


def guard_on(zk: FakeZooKeeper, fences: list[str], **kwargs: object) -> SessionGuard:
    guard = SessionGuard(zk, 4.0, 0.3, fences.append, lambda _lost: None, **kwargs)  # type: ignore[arg-type]
    guard._new_session()
    return guard


def test_a_replaced_session_is_fenced_even_if_lost_was_never_seen(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    guard = guard_on(zk, fences)
    guard._check_replaced()
    assert fences == []
    zk.session_id = 0x200  # kazoo opened a new session between two polls
    guard._check_replaced()
    assert fences == ["ZooKeeper session 0x100 expired and was replaced by 0x200"]
    assert guard.session_lost and guard.session_id == 0x200  # the agent registers again


def test_the_fence_follows_the_negotiated_session_timeout(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    zk.negotiated_timeout = 2.0  # asked for 4 s, the server granted 2 s (20 x tickTime)
    guard = guard_on(zk, fences)
    assert guard.fence_after == pytest.approx(1.7)


def test_coordination_records_the_negotiated_timeout_at_each_connection() -> None:
    """kazoo's connection handler returns (read timeout = 2/3 of the negotiated, connect)."""
    granted = [6000.0]
    connection = SimpleNamespace(_connect=lambda *_a: (granted[0] * 2 / 3, 0))
    coord = Coordination(SimpleNamespace(_connection=connection), "c", "h")  # type: ignore[arg-type]
    assert coord.negotiated_timeout is None
    connection._connect("host", "ip", 2181)
    assert coord.negotiated_timeout == pytest.approx(6.0)
    granted[0] = 10000.0
    connection._connect("host", "ip", 2181)
    assert coord.negotiated_timeout == pytest.approx(10.0)


def test_a_margin_below_twice_the_poll_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"safety_margin = 0\.05 must be at least 0\.2s"):
        SessionGuard(FakeZooKeeper(), 4.0, 0.05, print, print)  # type: ignore[arg-type]


def test_watchdog_pings_only_while_the_fence_is_a_period_away(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1500000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sent: list[str] = []
    monkeypatch.setattr(sdnotify, "notify", sent.append)
    ping = sdnotify.WatchdogPing(3.7)
    monkeypatch.setattr(sdnotify.time, "monotonic", lambda: clock[0])
    ping.alive(clock[0] + 1.6)
    ping.alive(clock[0] + 1.4)  # the fence is due sooner than the watchdog would fire
    assert sent == ["WATCHDOG=1"]
    ping.fenced()
    assert sent == ["WATCHDOG=1"] * 2
    with pytest.raises(ConfigError, match="must be below"):
        sdnotify.WatchdogPing(1.5)


def sleeps_of(guard: SessionGuard) -> list[float]:
    """Record the guard loop's sleeps instead of sleeping."""
    slept: list[float] = []
    guard.woken.wait = lambda timeout=None: slept.append(timeout) or False  # type: ignore[method-assign,assignment,func-returns-value]
    return slept


def test_the_loop_wakes_once_a_heartbeat_while_answers_come(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    guard = guard_on(zk, fences)
    slept = sleeps_of(guard)
    for _ in range(5):
        guard._beat()
        assert not guard._sleep()
        clock[0] += slept[-1]
    assert slept == [pytest.approx(SessionGuard.HEARTBEAT)] * 5  # 5 wake-ups a second, not 20
    assert zk.sent == 5 and fences == []


def test_the_loop_wakes_at_the_fence_deadline_to_the_instant(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    guard = guard_on(zk, fences)
    slept = sleeps_of(guard)
    guard._beat()  # answered: the deadline is this send + fence_after (3.7 s)
    zk.silent = True
    clock[0] += 3.65
    guard._beat()  # in flight, never answered
    guard._sleep()
    assert slept[-1] == pytest.approx(0.05)  # the deadline, before the next heartbeat is due
    clock[0] += 0.3
    guard._sleep()
    assert slept[-1] == 0.0  # past the deadline: the loop fences right away
    guard._fence("no answer")
    guard._sleep()  # fenced, the heartbeat overdue (in flight): no busy loop, POLL
    assert slept[-1] == pytest.approx(SessionGuard.POLL)
    assert fences == ["no answer"]


def test_a_state_change_or_stop_wakes_the_loop_at_once(clock: list[float]) -> None:
    from cluster.coord import SessionState

    guard = guard_on(FakeZooKeeper(), [])
    guard.listener(SessionState.LOST)
    assert guard.woken.is_set() and guard.session_lost
    guard.woken.clear()
    guard.stop()
    assert guard._sleep()  # the woken event is set: returns at once, stopping


def test_with_a_watchdog_the_loop_wakes_for_the_last_allowed_ping(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1500000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    guard = guard_on(FakeZooKeeper(), [], watchdog=sdnotify.WatchdogPing(3.7))
    slept = sleeps_of(guard)
    guard._beat()
    guard.coord.silent = True  # type: ignore[attr-defined]
    clock[0] += 2.25
    guard._beat()  # in flight, never answered; the next would be due at 1002.45
    guard._sleep()
    # deadline = answered send + 3.7 + 0.3 - 2 polls = 1000 + 3.9; the last ping 1.5 s before
    assert clock[0] + slept[-1] == pytest.approx(1000.0 + 3.9 - 1.5)
