"""The agent keeps watching while it restores, and notices a store that restarted between two
checks (issue 13's "other holes"); real processes, but for the pure-logic verdicts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from cluster.agent.machine import AgentMachine
from cluster.drill.workload import numbered_jobs, submit
from cluster.endpoint import Endpoint
from cluster.errors import StoreError
from cluster.health import HangWatch, Health
from cluster.process import wait_until as wait_for
from cluster.store import Store, StoreIdentity
from tests.clusterctl import gearman, local_cluster, node, status_json, wait_until

STORE = Endpoint("127.0.0.1", 1)


def test_a_store_that_answers_as_another_memcached_is_lost() -> None:
    identities = [StoreIdentity(100, 1000.0), StoreIdentity(100, 1000.5),
                  StoreIdentity(100, 1060.0), StoreIdentity(7, 1060.0)]  # fmt: skip

    def identity() -> StoreIdentity:
        return identities.pop(0)

    agent = AgentMachine.__new__(AgentMachine)  # only the store check: no ZooKeeper, gearmand
    agent.writes_to, agent.store_identity = STORE, None
    agent.stores = {STORE: SimpleNamespace(identity=identity)}
    assert agent._store_lost() is None  # the first look
    assert agent._store_lost() is None  # `uptime` has whole seconds: not a restart
    assert agent._store_lost() == (
        "restarted",
        "restarted between two checks (memcached pid 100 -> 100): it is empty",
    )
    how, why = agent._store_lost()
    assert (how, why) == ("restarted", "restarted between two checks (memcached pid 100 -> 7): "
                          "it is empty")  # fmt: skip

    def down() -> StoreIdentity:
        raise StoreError("memcached 127.0.0.1:1: connection refused")

    agent.stores[STORE] = SimpleNamespace(identity=down)
    assert agent._store_lost() == ("down", "lost (memcached 127.0.0.1:1: connection refused)")


@pytest.mark.integration
def test_store_identity_is_memcacheds_pid_and_start(memcached: Endpoint) -> None:
    identity = Store(memcached).identity()
    assert identity.started <= time.time()
    assert not identity.restarted_since(identity)


@pytest.mark.integration
def test_hang_watch_counts_failed_checks_in_a_row() -> None:
    frozen = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(frozen.pid, signal.SIGSTOP)  # delivered asynchronously
        wait_for(lambda: psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED,
                 timeout=10, what="the stopped state")  # fmt: skip
        watch = HangWatch(frozen.pid, Endpoint.parse("127.0.0.1:1"), 0.1, 0.0, 3)
        assert [watch.ok(), watch.ok(), watch.ok()] == [True, True, False]
        assert watch.last is Health.STOPPED
    finally:
        frozen.kill()
        frozen.wait()


@pytest.mark.integration
def test_a_gearmand_that_hangs_while_restoring_is_restarted(tmp_path: Path) -> None:
    jobs = 100_000  # a restore of several seconds: the hang falls inside it
    with local_cluster(tmp_path / "c", nodes=1) as directory:
        first = node(status_json(directory), "node1")
        assert submit(gearman(first), numbered_jobs(jobs)) == jobs
        os.kill(first["gearmand_pid"], signal.SIGKILL)  # the agent restarts it and restores

        def restoring_anew(status: dict[str, Any]) -> bool:
            now = node(status, "node1")
            return now["state"] == "restoring" and now["gearmand_pid"] != first["gearmand_pid"]

        hung = node(wait_until(directory, restoring_anew), "node1")["gearmand_pid"]
        os.kill(hung, signal.SIGSTOP)
        status = wait_until(directory, lambda s: node(s, "node1")["state"] == "serving"
                            and node(s, "node1")["queued_jobs"] == jobs)  # fmt: skip
        assert node(status, "node1")["gearmand_pid"] != hung
        log = (directory / "node1" / "log" / "agent.log").read_text()
        assert f"gearmand pid {hung} is stopped during the restore" in log, log[-3000:]
