"""SessionGuard's heartbeat, on a fake clock and a fake ZooKeeper client (pure logic)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cluster import lease
from cluster.lease import SessionGuard


class Answer:
    def successful(self) -> bool:
        return True


class FakeZooKeeper:
    """Answers every `exists_async` at once (or never, while `silent`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.silent = False

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
