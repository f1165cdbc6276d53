"""The records kept in ZooKeeper: their JSON is a contract (peers of other versions, status)."""

from __future__ import annotations

import json

import pytest

from cluster.coord import (
    AGENT_STATES,
    MemberRecord,
    NodeState,
    Outcome,
    Owner,
    PartRecord,
    PartSummary,
    Purpose,
    StoreRecord,
    TakeoverRecord,
)
from cluster.coord.paths import ClusterPaths


def test_member_record_round_trip_ignores_unknown_keys() -> None:
    record = MemberRecord("n1", "h:1", "h:2", 10, 11, "serving", restarts=2)
    assert MemberRecord.decode(record.encode()) == record
    newer = record.encode().replace(b'"node"', b'"future": 1, "node"')
    assert MemberRecord.decode(newer) == record


def test_member_states_are_the_status_strings() -> None:
    record = MemberRecord("n1", "h:1", "h:2", 10, None, NodeState.STORE_LOST)
    assert json.loads(record.encode())["state"] == "store-lost"
    assert NodeState.DOWN not in AGENT_STATES  # only the local status shows `down`
    assert MemberRecord("n1", "h:1", "h:2", 10, 11, NodeState.RESTORING).live
    assert not record.live


@pytest.mark.parametrize(
    ("outcome", "reason", "text"),
    [
        (Outcome.RUNNING, "", "running"),
        (Outcome.DONE, "", "done"),
        (
            Outcome.DONE,
            "3 jobs wait for their function name",
            "done; 3 jobs wait for their function name",
        ),
        (Outcome.INTERRUPTED, "lease lost: a: b", "interrupted: lease lost: a: b"),
    ],
)
def test_takeover_outcome_is_one_string_on_the_wire(
    outcome: Outcome, reason: str, text: str
) -> None:
    record = TakeoverRecord("n2", "n1", started=1.0, outcome=outcome, reason=reason)
    wire = json.loads(record.encode())
    assert wire["outcome"] == text
    assert set(wire) == {
        "store",
        "by",
        "started",
        "finished",
        "jobs",
        "seconds",
        "outcome",
        "manual",
        "pending",
        "parts",
    }
    back = TakeoverRecord.decode(record.encode())
    assert (back.outcome, back.reason, back.done) == (outcome, reason, outcome is Outcome.DONE)


def test_a_spread_takeover_keeps_its_parts_and_an_older_record_has_none() -> None:
    record = TakeoverRecord("n2", "n1", started=1.0)
    record.parts = (PartRecord((3, 4), done=True, drainers=("n3", "n1")).summary(1),)
    back = TakeoverRecord.decode(record.encode())
    assert back.parts == (PartSummary(1, ("n3", "n1"), 7, True),)
    older = {k: v for k, v in record.as_json().items() if k != "parts"}
    assert TakeoverRecord.decode(json.dumps(older).encode()).parts == ()


def test_finished_takeover_has_its_duration() -> None:
    record = TakeoverRecord("n2", "n1", started=0.0)
    record.finish(Outcome.DONE, 7)
    assert record.jobs == 7 and record.finished is not None and record.seconds == record.finished


def test_store_and_owner_records_decode_what_peers_wrote() -> None:
    store = StoreRecord("h:11211", "h:4730", "host1", 42)
    assert StoreRecord.decode(store.encode()) == store
    with pytest.raises(KeyError):
        StoreRecord.decode(b"{}")  # a store znode nobody described yet
    assert store.addresses == ("h:11211",)
    twins = StoreRecord("h:11211", "h:4730", "host1", 42, twin="h:11212")
    assert StoreRecord.decode(twins.encode()).addresses == ("h:11211", "h:11212")
    pending = twins.with_pending("h:11212", 1000.0)
    assert StoreRecord.decode(pending.encode()) == pending
    assert (pending.pending, pending.pending_since) == ("h:11212", 1000.0)
    assert pending.with_pending(None, 5.0) == twins
    owner = Owner("n1", Purpose.DRAIN, 0x1234)
    wire = json.loads(owner.encode())
    assert wire["session"] == "0x1234" and wire["purpose"] == "drain"
    assert Owner.decode(owner.encode(), 0x99) == Owner("n1", "drain", 0x99)  # the znode decides


def test_paths_layout() -> None:
    paths = ClusterPaths("main")
    assert paths.member("n1") == "/gearctl/main/members/n1"
    assert paths.store_owner("n1") == "/gearctl/main/stores/n1/owner"
    assert paths.takeover_paused == "/gearctl/main/takeover-paused"
