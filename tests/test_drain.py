"""`gearctl store drain` and `gearctl takeover pause/resume` on a real 3-node cluster.

Automatic take-over is paused first, so no survivor drains the dead node's store by itself: the
manual drain is the only one, whatever the timing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cluster import coord
from cluster.coord import Purpose
from cluster.process import is_running, wait_until
from tests.clusterctl import gearctl, local_cluster, node, status_json
from tests.clusterctl import wait_until as wait_status
from tests.test_takeover import JOBS, load, run_to_completion

pytestmark = pytest.mark.integration


def drain(directory: Path, store: str, into: str) -> tuple[int, dict[str, object], str]:
    result = gearctl("store", "drain", store, "--into", into, "--dir", str(directory), "--json")
    return result.returncode, json.loads(result.stdout), result.stderr


def test_drain_is_refused_until_the_node_is_dead_and_fenced_then_moves_every_job_once(
    tmp_path: Path,
) -> None:
    with local_cluster(tmp_path / "c") as directory:
        assert gearctl("takeover", "pause", "--dir", str(directory)).returncode == 0
        load(directory, "node2")
        victim = node(status_json(directory), "node2")

        code, report, stderr = drain(directory, "node2", "node1")
        assert code == 1 and str(report["outcome"]).startswith("refused")
        assert "still has a ZooKeeper session" in stderr

        # The agent dies, and its gearmand with it (parent-death signal); once the session
        # has expired the store has no owner. (A gearmand that outlives its session is the
        # fencing-failed drill's case.)
        os.kill(victim["agent_pid"], signal.SIGKILL)
        wait_until(lambda: not is_running(victim["gearmand_pid"]), timeout=10,
                   what="gearmand's death with its agent")  # fmt: skip
        status = wait_status(directory, lambda s: node(s, "node2")["zk_session"] is None)
        time.sleep(2.5)  # survivors scan at least twice: paused, none of them drains
        status = status_json(directory)
        assert status["takeover_paused"] is True and status["takeovers"] == []
        assert node(status, "node2")["store_items"] == JOBS

        with coord.session(status["zookeeper"]["address"], "local", timeout=10) as session:
            other = session.lease("node2", "node3", Purpose.DRAIN)
            assert other.try_acquire() is None
            code, report, stderr = drain(directory, "node2", "node1")
            assert code == 1 and "held by node3 (drain" in stderr, stderr
            assert "another drain runs" in stderr
            other.release()

        code, report, stderr = drain(directory, "node2", "node1")
        assert code == 0, stderr
        assert report["outcome"] == "done" and report["moved"] == report["expected"] == JOBS
        assert report["fenced"] == (
            f"gearmand pid {victim['gearmand_pid']} is gone (same kernel, PID namespace)"
        )
        status = status_json(directory)
        (takeover,) = status["takeovers"]
        assert (takeover["store"], takeover["by"], takeover["jobs"]) == ("node2", "node1", JOBS)
        assert takeover["manual"] is True and takeover["outcome"] == "done"
        assert node(status, "node2")["store_items"] == 0
        assert node(status, "node1")["queued_jobs"] == JOBS

        assert gearctl("takeover", "resume", "--dir", str(directory)).returncode == 0
        assert status_json(directory)["takeover_paused"] is False
        ledger = run_to_completion(directory, {"job": JOBS})
        assert (ledger.lost, ledger.duplicated, ledger.unexpected) == (0, 0, 0)


def test_drain_rejects_bad_targets(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "c", nodes=2) as directory:
        for into, message in [
            ("node2", "cannot drain store node2 into its own node"),
            ("node9", "--into node9: no such live node"),
        ]:
            code, _, stderr = drain(directory, "node2", into)
            assert code == 1 and message in stderr, stderr
        code, _, stderr = drain(directory, "nodeX", "node1")
        assert code == 1 and "no store nodeX in cluster local" in stderr
