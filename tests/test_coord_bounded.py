"""A bounded view of a ZooKeeper session (the agent's main loop): a request ZooKeeper does not
answer in time raises CoordinationTimeout instead of waiting as long as the cut lasts, and a
timed-out write may still land later on the same session. Fakes for the logic; a real
ZooKeeper, SIGSTOPped, for kazoo's queueing."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kazoo.exceptions import NodeExistsError
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.handlers.utils import AsyncResult

from cluster.coord import (
    Coordination,
    CoordinationTimeout,
    MemberRecord,
    NodeState,
    Purpose,
    session,
)
from cluster.endpoint import Endpoint
from cluster.local.zookeeper_server import ZooKeeperLaunch, start_zookeeper
from cluster.process import free_port, stop_pid, wait_until
from tests.conftest import HOST

SESSION = 0x100
RECORD = MemberRecord("n1", "h:4730", "h:11211", agent_pid=1, gearmand_pid=None, state="serving")


class FakeZooKeeper:
    """kazoo's async calls: each answered by `answers[name]` (a value, an exception, or a
    callable of the call's arguments), never if it has none (as while kazoo reconnects)."""

    def __init__(self, **answers: Any) -> None:
        self.handler = SequentialThreadingHandler()
        self._connection = SimpleNamespace(_connect=lambda *_a: (4000.0, 0))
        self.client_id = (SESSION, b"")
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., AsyncResult]:
        if not name.endswith("_async"):
            raise AttributeError(name)

        def call(*args: Any, **_kwargs: Any) -> AsyncResult:
            self.calls.append((name, args))
            result = self.handler.async_result()
            if name in self.answers:
                answer = self.answers[name]
                answer = answer(*args) if callable(answer) else answer
                if isinstance(answer, Exception):
                    result.set_exception(answer)
                else:
                    result.set(answer)
            return result

        return call


def coordination(zk: FakeZooKeeper) -> Coordination:
    return Coordination(zk, "c", "zk:2181")  # type: ignore[arg-type]


def test_a_bounded_request_zookeeper_does_not_answer_times_out() -> None:
    base = coordination(FakeZooKeeper())
    view = base.bounded(0.05)
    with pytest.raises(CoordinationTimeout, match=r"did not answer within 0.05s"):
        view.update_member(RECORD)
    with pytest.raises(CoordinationTimeout):
        view.lease("n1", "n1", Purpose.SERVE).try_acquire()
    assert base.request_timeout is None  # the session itself still waits as kazoo does


def test_a_bounded_view_shares_the_session_and_what_the_server_granted() -> None:
    base = coordination(FakeZooKeeper())
    view = base.bounded(1.0)
    base.zk._connection._connect("host", "ip", 2181)
    assert view.negotiated_timeout == base.negotiated_timeout == pytest.approx(6.0)
    assert view.zk is base.zk and view.session_id == SESSION
    with pytest.raises(ValueError, match="positive"):
        base.bounded(0)


def member_held_by(session_id: int) -> Callable[..., tuple[bytes, Any]]:
    return lambda *_a: (RECORD.encode(), SimpleNamespace(ephemeralOwner=session_id, ctime=0))


def test_a_member_record_our_own_session_holds_is_ours_and_rewritten() -> None:
    """A create that timed out can land later: registering again finds our own record."""
    zk = FakeZooKeeper(
        create_async=NodeExistsError(), get_async=member_held_by(SESSION), set_async=None
    )
    assert coordination(zk).bounded(1.0).register(RECORD)
    assert [name for name, _ in zk.calls] == ["create_async", "get_async", "set_async"]
    assert zk.calls[-1][1][1] == RECORD.encode()


def test_a_member_record_another_session_holds_is_not_ours() -> None:
    zk = FakeZooKeeper(create_async=NodeExistsError(), get_async=member_held_by(SESSION + 1))
    assert not coordination(zk).bounded(1.0).register(RECORD)
    assert [name for name, _ in zk.calls] == ["create_async", "get_async"]


@pytest.mark.integration
def test_a_stopped_zookeeper_times_requests_out_and_the_writes_land_once_it_answers(
    tmp_path: Path,
) -> None:
    """SIGSTOP: connections stay open, nothing is answered (a plain kazoo call waits as long as
    that lasts). Stopped for less than the session timeout: the session survives, and the
    timed-out writes land, in order, once ZooKeeper runs again."""
    launch = ZooKeeperLaunch(
        Endpoint(HOST, free_port()), tmp_path / "data", tmp_path / "zk.log", tmp_path / "zk.pid"
    )
    proc = start_zookeeper(launch)
    try:
        with session(str(launch.endpoint), "bounded", timeout=10.0) as coord:
            view = coord.bounded(0.5)
            epoch = view.next_epoch("n1")
            # As in a cluster with members: a create whose parent is missing is retried after
            # the ensure_path, i.e. after requests made meanwhile.
            coord.zk.ensure_path(coord.paths.members)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(CoordinationTimeout):
                    view.register(RECORD)
                with pytest.raises(CoordinationTimeout):
                    view.update_member(RECORD.with_changes(state=NodeState.RESTORING))
                with pytest.raises(CoordinationTimeout):
                    view.member_entry("n1")
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            # The timed-out create and set landed: the record is ours, in its last state.
            wait_until(lambda: coord.member_entry("n1") is not None, timeout=10, what="record")
            entry = coord.member_entry("n1")
            assert entry is not None and entry.session == coord.session_id
            assert entry.record.state == NodeState.RESTORING
            assert view.register(RECORD)  # registering again: our own session's record
            assert view.next_epoch("n1") == epoch + 1
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_pid(proc.pid)
        proc.wait()
