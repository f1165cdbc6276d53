"""Orphan take-over on real 3-node clusters: every job of a dead node runs once, on a survivor.

The drills (tests/test_drills.py) cover the returning node, the restart storm and the killed
drainer; these tests check what is specific to take-over.

Each scenario ends like a drill: workers drain every server, and the ledger counts each unique.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.drill.workload import FUNCTIONS, Ledger, drain, numbered_jobs, submit
from tests.clusterctl import gearctl, gearman, kill_node, local_cluster, node, status_json
from tests.clusterctl import wait_until as wait_status

pytestmark = pytest.mark.integration

JOBS = 10_000


def run_to_completion(directory: Path, submitted: dict[str, int]) -> Ledger:
    """Drain every live server and count each unique of the jobs submitted (prefix -> count)."""
    status = status_json(directory)
    servers = [gearman(n) for n in status["nodes"] if n["state"] == "serving"]
    expected = {f"{prefix}-{n}" for prefix, count in submitted.items() for n in range(count)}
    ledger = Ledger.count(len(expected), expected, drain(servers, FUNCTIONS, len(expected)))
    print(ledger)
    return ledger


def load(directory: Path, node_name: str, count: int = JOBS, prefix: str = "job") -> None:
    target = gearman(node(status_json(directory), node_name))
    assert submit(target, numbered_jobs(count, prefix)) == count


def takeovers_done(status: dict[str, Any], count: int) -> bool:
    return sum(t["outcome"] == "done" for t in status["takeovers"]) >= count


def test_node_loss_is_drained_once_by_one_survivor(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c") as directory:
        load(directory, "node2")
        kill_node(node(status_json(directory), "node2"))
        status = wait_status(directory, lambda s: takeovers_done(s, 1))
        (takeover,) = status["takeovers"]
        assert takeover["store"] == "node2" and takeover["jobs"] == JOBS
        assert takeover["by"] in ("node1", "node3")
        assert node(status, "node2")["store_items"] == 0
        listed = gearctl("takeover", "list", "--dir", str(directory), "--json")
        assert json.loads(listed.stdout) == status["takeovers"]
        ledger = run_to_completion(directory, {"job": JOBS})
        assert (ledger.lost, ledger.duplicated, ledger.unexpected) == (0, 0, 0)


def test_two_of_three_nodes_die_and_the_last_drains_both(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c") as directory:
        load(directory, "node1", prefix="a")
        load(directory, "node2", prefix="b")
        status = status_json(directory)
        kill_node(node(status, "node1"))
        kill_node(node(status, "node2"))
        status = wait_status(directory, lambda s: takeovers_done(s, 2))
        assert {t["by"] for t in status["takeovers"]} == {"node3"}
        assert node(status, "node3")["queued_jobs"] == 2 * JOBS
        ledger = run_to_completion(directory, {"a": JOBS, "b": JOBS})
        assert (ledger.lost, ledger.duplicated, ledger.unexpected) == (0, 0, 0)


def test_unreachable_store_is_retried_until_it_returns(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c") as directory:
        load(directory, "node2")
        state = status_json(directory)
        store_pid = _store_pid(directory, "node2")
        os.kill(store_pid, signal.SIGSTOP)  # the store hangs: reachable by TCP, never answers
        try:
            kill_node(node(state, "node2"))
            time.sleep(8)  # past the session timeout: survivors try and fail to reach it
            assert not takeovers_done(status_json(directory), 1)
        finally:
            os.kill(store_pid, signal.SIGCONT)
        wait_status(directory, lambda s: takeovers_done(s, 1))
        ledger = run_to_completion(directory, {"job": JOBS})
        assert (ledger.lost, ledger.duplicated, ledger.unexpected) == (0, 0, 0)


def _store_pid(directory: Path, name: str) -> int:
    state = json.loads((directory / "cluster.json").read_text())
    return int(state["processes"][f"store:{name}"]["pid"])
