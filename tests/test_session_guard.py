"""SessionGuard's heartbeat, on a fake clock and a fake ZooKeeper client (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from cluster import lease, sdnotify
from cluster.errors import ConfigError
from cluster.lease import SessionGuard


class Answer:
    def successful(self) -> bool:
        return True


class FakeZooKeeper:
    """Answers every `exists_async` at once (or never, while `silent`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.silent = False
        self.client_id: tuple[int, bytes] | None = (0x100, b"")
        # kazoo's connection handler returns (read timeout = 2/3 of the negotiated, connect)
        self._connection = SimpleNamespace(_connect=lambda *_a: (self.negotiated_ms * 2 / 3, 0))
        self.negotiated_ms = 4000.0

    def connect(self) -> None:
        """What kazoo does on each (re)connection."""
        self._connection._connect("host", "ip", 2181)

    def exists_async(self, _path: str) -> FakeZooKeeper:
        self.sent += 1
        return self

    def rawlink(self, callback: Callable[[Answer], None]) -> None:
        if not self.silent:
            callback(Answer())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(lease.time, "monotonic", lambda: now[0])
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
    zk.connect()
    guard._new_session()
    return guard


def test_a_replaced_session_is_fenced_even_if_lost_was_never_seen(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    guard = guard_on(zk, fences)
    guard._check_replaced()
    assert fences == []
    zk.client_id = (0x200, b"")  # kazoo opened a new session between two polls
    guard._check_replaced()
    assert fences == ["ZooKeeper session 0x100 expired and was replaced by 0x200"]
    assert guard.session_lost and guard.session_id == 0x200  # the agent registers again


def test_the_fence_follows_the_negotiated_session_timeout(clock: list[float]) -> None:
    zk, fences = FakeZooKeeper(), []
    zk.negotiated_ms = 2000.0  # asked for 4 s, the server granted 2 s (20 x tickTime)
    guard = guard_on(zk, fences)
    assert guard.fence_after == pytest.approx(1.7)


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
