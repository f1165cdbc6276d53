"""Operators' views of a node with twin stores (issue 18): `cluster status` and `store inspect`
show both stores; a node with one store shows what it always did. Real memcached, gearmand and
ZooKeeper; the store records are written as an agent writes them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import coord
from cluster.clusterstatus import collect, degraded
from cluster.coord import StoreRecord
from cluster.drill.workload import numbered_jobs
from cluster.endpoint import Endpoint
from cluster.storeview import inspect_in_cluster
from cluster.target import Target
from tests.clusterctl import gearctl
from tests.conftest import running_memcached
from tests.twinstores import persist

pytestmark = pytest.mark.integration

OLDER, NEWER = 12, 5  # jobs in the twin (under g1_), in the store its last gearmand wrote (g2_)


@pytest.fixture
def cluster(zookeeper: Endpoint, tmp_path: Path) -> Iterator[tuple[Target, Endpoint, Endpoint]]:
    """A cluster whose dead node2 has twin stores holding jobs, and node3 one store (empty):
    (target, node2's store, node2's twin)."""
    target = Target(str(zookeeper), f"views-{uuid.uuid4().hex[:8]}")
    with (
        running_memcached(tmp_path, "store") as store,
        running_memcached(tmp_path, "twin") as twin,
        running_memcached(tmp_path, "single") as single,
    ):
        persist(twin, "g1_", numbered_jobs(OLDER, prefix="old"), tmp_path)
        dead = persist(store, "g2_", numbered_jobs(NEWER, prefix="new"), tmp_path)
        with coord.session(target.zookeeper, str(target.cluster)) as session:
            session.describe_store("node2", StoreRecord(str(store), str(dead), "h", None,
                                                        twin=str(twin)))  # fmt: skip
            session.describe_store("node3", StoreRecord(str(single), str(dead), "h", None))
            for _ in range(2):  # node2's current gearmand started under g2_
                session.next_epoch("node2")
        yield target, store, twin


def by_name(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(node for node in status["nodes"] if node["name"] == name)


def test_status_shows_both_twin_stores(cluster: tuple[Target, Endpoint, Endpoint]) -> None:
    target, store, twin = cluster
    status = collect(target)
    node2, node3 = by_name(status, "node2"), by_name(status, "node3")
    assert (node2["store"], node2["store_items"], node2["store_up"]) == (str(store), NEWER, True)
    assert (node2["twin"], node2["twin_items"], node2["twin_up"]) == (str(twin), OLDER, True)
    assert (node3["twin"], node3["twin_items"], node3["twin_up"]) == (None, None, None)
    assert node3["store_items"] == 0 and node3["store_up"] is True
    stores = {s["store"]: s for s in status["stores"]}
    assert (stores["node2"]["address"], stores["node2"]["twin"]) == (str(store), str(twin))
    assert stores["node3"]["twin"] is None
    assert (node2["pending"], stores["node2"]["pending"]) == (None, None)
    assert "node2: twin store" not in "; ".join(degraded(status))


def test_status_shows_a_pending_twin(cluster: tuple[Target, Endpoint, Endpoint]) -> None:
    target, _, twin = cluster
    with coord.session(target.zookeeper, str(target.cluster)) as session:
        record = session.store_record("node2")
        assert record is not None
        session.describe_store("node2", record.with_pending(str(twin), 1000.0))
    status = collect(target)
    stores = {s["store"]: s for s in status["stores"]}
    assert by_name(status, "node2")["pending"] == stores["node2"]["pending"] == str(twin)
    assert by_name(status, "node3")["pending"] is None


def test_inspect_shows_both_twin_stores(cluster: tuple[Target, Endpoint, Endpoint]) -> None:
    target, store, twin = cluster
    summary = inspect_in_cluster(target, "node2")
    assert (summary["store"], summary["items"]) == (str(store), NEWER)
    assert {row["prefix"]: row["incarnation"] for row in summary["jobs"]} == {"g2_": "live"}
    assert sum(row["count"] for row in summary["jobs"]) == NEWER
    assert (summary["twin"]["store"], summary["twin"]["items"]) == (str(twin), OLDER)
    assert {row["prefix"]: row["incarnation"] for row in summary["twin"]["jobs"]} == {
        "g1_": "waiting"}  # fmt: skip
    assert sum(row["count"] for row in summary["twin"]["jobs"]) == OLDER
    assert inspect_in_cluster(target, "node3")["twin"] is None

    where = ("--zookeeper", target.zookeeper, "--cluster", str(target.cluster))
    shown = gearctl("store", "inspect", "node2", *where)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"store {store}: {NEWER} items, {summary['bytes']} bytes"
    assert any(line.startswith(f"twin store {twin}: {OLDER} items") for line in lines)
    as_json = json.loads(gearctl("store", "inspect", "node2", *where, "--json").stdout)
    assert as_json["twin"]["items"] == OLDER and as_json["items"] == NEWER
