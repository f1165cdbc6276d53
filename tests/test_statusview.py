"""The status table for people (cluster.statusview.render), from a fixed status document."""

from __future__ import annotations

from typing import Any

from cluster.statusview import render

NOW = 1_800_000_000.0


def node(name: str, state: str, session: str | None, session_state: str | None) -> dict[str, Any]:
    return {
        "name": name, "state": state, "gearman": "127.0.0.1:4730", "store": "127.0.0.1:11211",
        "queued_jobs": 5 if state == "serving" else None, "store_items": 5, "restarts": 2,
        "gearmand_started": NOW - 300, "zk_session": session, "zk_session_state": session_state,
        "gearmand_up": state == "serving", "store_up": True,
    }  # fmt: skip


STATUS: dict[str, Any] = {
    "cluster": "local",
    "zookeeper": {"address": "127.0.0.1:2181", "reachable": True,
                  "members": [{"address": "127.0.0.1:2181", "mode": "standalone"}]},
    "nodes": [node("node1", "serving", "0x1", "live"), node("node2", "down", "0x2", "expiring"),
              node("node3", "serving", "0x3", "live")],
    "stores": [{"store": "node1", "owner": {"node": "node1", "purpose": "serve"}},
               {"store": "node2", "owner": {"node": "node3", "purpose": "drain"}},
               {"store": "node3", "owner": None}],
    "takeovers": [
        {"store": "node2", "by": "node3", "started": NOW - 3, "jobs": 0, "seconds": 0.0,
         "outcome": "running",
         "parts": [{"part": 0, "drainers": ["node1", "node3"], "jobs": 40, "done": True},
                   {"part": 1, "drainers": [], "jobs": 0, "done": False}]},
        {"store": "node1", "by": "node2", "started": NOW - 90, "jobs": 7, "seconds": 1.5,
         "outcome": "done", "manual": True},
    ],
    "takeover_paused": True,
}  # fmt: skip


def test_table_rows_owners_sessions_and_takeovers() -> None:
    lines = render(STATUS, now=NOW).splitlines()
    assert lines[0].startswith("cluster local  zookeeper 127.0.0.1:2181 (reachable; ")
    assert "PAUSED" in lines[1]
    header, node1, node2, node3 = (line.split() for line in lines[2:6])
    assert header[:6] == ["node", "state", "gearman", "store", "queued", "items"]
    assert node1[1:] == ["serving", "127.0.0.1:4730", "127.0.0.1:11211", "5", "5", "node1", "2",
                         "5m", "ago", "0x1", "live"]  # fmt: skip
    assert node2[4:] == ["-", "5", "node3", "(drain)", "2", "5m", "ago", "0x2", "expiring"]
    assert node3[6] == "nobody"
    assert lines[6] == "take-over of store node2 by node3: running, started 3s ago"
    assert lines[7] == "  part 0: node1 then node3, 40 jobs, done"
    assert lines[8] == "  part 1: nobody yet, 0 jobs, not done"
    assert lines[9] == "manual drain of store node1 by node2: done, 7 jobs in 1.50s"
    assert lines[10] == "DEGRADED: node2 is down"


def test_unreachable_zookeeper_and_no_session() -> None:
    status = {**STATUS, "takeover_paused": False, "takeovers": [],
              "zookeeper": {**STATUS["zookeeper"], "reachable": False,
                            "members": [{"address": "127.0.0.1:2181", "mode": None}]},
              "nodes": [node("node1", "down", None, None)]}  # fmt: skip
    lines = render(status, now=NOW).splitlines()
    assert "(UNREACHABLE; 127.0.0.1:2181 down)" in lines[0]
    assert len(lines) == 4 and lines[2].endswith("5m ago        -")
    assert lines[3] == "DEGRADED: ZooKeeper unreachable; node1 is down"


def test_every_node_serving_but_one_gearmand_silent() -> None:
    status = {**STATUS, "nodes": [node("node1", "serving", "0x1", "live")]}
    assert render(status, now=NOW).splitlines()[-1] == "every node serving"
    status["nodes"][0]["gearmand_up"] = False
    assert render(status, now=NOW).splitlines()[-1] == ("DEGRADED: node1: gearmand does not answer")


def test_a_node_with_twin_stores_shows_both_and_a_silent_twin_is_degraded() -> None:
    twins = {**node("node1", "serving", "0x1", "live"), "twin": "127.0.0.1:11212",
             "twin_items": 3, "twin_up": True}  # fmt: skip
    status = {**STATUS, "takeovers": [], "nodes": [twins, node("node3", "serving", "0x3", "live")]}
    lines = render(status, now=NOW).splitlines()
    node1, node3 = lines[3].split(), lines[4].split()
    assert node1[3:6] == ["127.0.0.1:11211+127.0.0.1:11212", "5", "5+3"]
    assert node3[3:6] == ["127.0.0.1:11211", "5", "5"]  # one store: as before
    assert lines[-1] == "every node serving"
    silent = {**twins, "twin_items": None, "twin_up": False}
    lines = render({**status, "nodes": [silent]}, now=NOW).splitlines()
    assert lines[3].split()[5] == "5+-"
    assert lines[-1] == "DEGRADED: node1: twin store 127.0.0.1:11212 does not answer"


def test_a_pending_twin_is_marked_degraded_and_named_in_its_take_over() -> None:
    pending = {**node("node1", "serving", "0x1", "live"), "store": "127.0.0.1:11212",
               "twin": "127.0.0.1:11211", "twin_items": None, "twin_up": False,
               "pending": "127.0.0.1:11211"}  # fmt: skip
    takeover = {"store": "node2", "by": "node3", "started": NOW - 9, "jobs": 4, "seconds": 0.5,
                "outcome": "done", "pending": "127.0.0.1:11311"}  # fmt: skip
    status = {**STATUS, "takeovers": [takeover], "nodes": [pending]}
    lines = render(status, now=NOW).splitlines()
    assert lines[3].split()[3:6] == ["127.0.0.1:11212+127.0.0.1:11211", "(pending)", "5"]
    assert lines[4] == ("take-over of store node2 by node3: done, 4 jobs in 0.50s, "
                        "twin 127.0.0.1:11311 pending")  # fmt: skip
    assert lines[-1] == ("DEGRADED: node1: twin store 127.0.0.1:11211 pending (its jobs wait "
                         "until it answers)")  # fmt: skip
