"""SessionGuard's heartbeat, on a fake clock and a fake coordination session (pure logic)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cluster import fencing
from cluster.fencing import SessionGuard


class FakeZooKeeper:
    """Answers every heartbeat at once (or never, while `silent`)."""

    def __init__(self) -> None:
        self.sent = 0
        self.silent = False

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
