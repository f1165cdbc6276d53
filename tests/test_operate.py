"""Operating any cluster: which cluster a command means, and status, history, inspect, pause and
workers through `--zookeeper` only, as on hosts where no `--dir` exists (issue 15)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from cluster import target as targets
from cluster.config import load_config, parse_config
from cluster.configview import effective_toml
from cluster.coord import ClusterPaths, StoreRecord
from cluster.drill.workload import Job, submit
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.probe import probe_nodes
from cluster.target import ClusterNotFound, Flags, Target, existing_cluster, resolve
from tests.clusterctl import kill_node, local_cluster, node, status_json
from tests.conftest import HOST

# -- which cluster ----------------------------------------------------------------------------


@pytest.fixture
def no_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No /etc/gearctl/agent.toml or ~/.config file is seen; returns a scratch directory."""
    monkeypatch.setattr(targets, "SYSTEM_CONFIG", tmp_path / "etc-agent.toml")
    monkeypatch.setattr(targets, "USER_CONFIG", tmp_path / "user-gearctl.toml")
    monkeypatch.chdir(tmp_path)  # no .gearctl here
    return tmp_path


def test_flags_win_over_environment_and_config(no_config_files: Path) -> None:
    env = {"GEARCTL_ZOOKEEPER": "env:2181", "GEARCTL_CLUSTER": "envc", "GEARCTL_AUTH_FILE": "/a"}
    found = resolve(Flags(zookeeper="flag:2181", cluster="flagc"), env)
    assert (found.zookeeper, found.cluster, found.auth_file) == ("flag:2181", "flagc", Path("/a"))
    assert found.source == "--zookeeper" and found.local is None
    found = resolve(Flags(), env)
    assert (found.zookeeper, found.cluster, found.source) == (
        "env:2181",
        "envc",
        "GEARCTL_ZOOKEEPER",
    )


def test_config_files_in_order(no_config_files: Path) -> None:
    agent = targets.SYSTEM_CONFIG
    agent.write_text('[node]\nname = "n1"\n[zookeeper]\nhosts = "zk1:2181,zk2:2181"\n'
                     'auth_file = "/etc/gearctl/zk.auth"\n')  # fmt: skip
    found = resolve(Flags(), {})
    assert (found.zookeeper, found.cluster) == ("zk1:2181,zk2:2181", "main")  # the agent default
    assert found.auth_file == Path("/etc/gearctl/zk.auth") and found.source == str(agent)
    own = no_config_files / "mine.toml"
    own.write_text('[cluster]\nname = "prod"\n[zookeeper]\nhosts = "zk9:2181"\n')
    found = resolve(Flags(config=own), {"GEARCTL_CLUSTER": "other"})
    assert (found.zookeeper, found.cluster) == ("zk9:2181", "other")  # environment wins
    agent.unlink()
    targets.USER_CONFIG.write_text('[zookeeper]\nhosts = "zk5:2181"\n')
    assert resolve(Flags(), {}).cluster is None  # the only cluster there


def test_nothing_given_and_no_local_cluster_is_a_clear_error(no_config_files: Path) -> None:
    with pytest.raises(GearctlError, match=r"no local cluster in \.gearctl and no cluster given"):
        resolve(Flags(), {})
    with pytest.raises(GearctlError, match="not both"):
        resolve(Flags(directory=Path("x"), zookeeper="z:1"), {})
    (no_config_files / "bad.toml").write_text("[zookeeper]\n")
    with pytest.raises(GearctlError, match=r"missing field zookeeper\.hosts"):
        resolve(Flags(config=no_config_files / "bad.toml"), {})


@pytest.mark.integration
def test_a_cluster_name_must_exist(zookeeper: Endpoint) -> None:
    zk = KazooClient(hosts=str(zookeeper), timeout=4)
    zk.start(timeout=5)
    try:
        zk.ensure_path(ClusterPaths("alpha").members)
    finally:
        zk.stop()
        zk.close()
    with targets.session(Target(str(zookeeper), "alpha")) as session:
        assert session.paths.cluster == "alpha"
        names = session.clusters()
    with pytest.raises(ClusterNotFound, match=r"no cluster 'alphx'.*clusters there: .*alpha"):
        targets.open_session(Target(str(zookeeper), "alphx"))
    assert existing_cluster(["alpha"], Target(str(zookeeper), None)) == "alpha"
    with pytest.raises(ClusterNotFound, match="several clusters"):
        existing_cluster([*names, "beta"], Target(str(zookeeper), None))
    with targets.session(Target(str(zookeeper), "alpha")) as session:
        assert "alphx" not in session.clusters()


def test_effective_config_is_printed_whole_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[node]\nname = "n1"\n[gearmand]\nlisten = "10.0.0.11"\n'
                    '[store]\naddress = "10.0.0.21"\n[zookeeper]\nhosts = "zk1"\n'
                    '[metrics]\nport = 9400\n')  # fmt: skip
    config = load_config(path)
    text = effective_toml(config, path)
    for line in ('listen = "10.0.0.11:4730"', "session_timeout = 4.0", "hang_checks = 3",
                 'address = "10.0.0.11"', 'cluster = "main"'):  # fmt: skip
        assert line in text
    again = parse_config(tomllib.loads(text))
    assert again.metrics == config.metrics and replace(again, metrics_host="") == config


# -- probes -----------------------------------------------------------------------------------


@pytest.fixture
def silent_hosts() -> Iterator[list[Endpoint]]:
    """Listeners that accept connections and never answer (hosts that hang)."""
    listeners, held = [], []
    stop = threading.Event()
    for _ in range(15):
        sock = socket.socket()
        sock.bind((HOST, 0))
        sock.listen(16)
        listeners.append(sock)

    def hold() -> None:
        for sock in listeners:
            sock.settimeout(0.05)
        while not stop.is_set():
            for sock in listeners:
                with contextlib.suppress(OSError):  # nobody knocked within 50 ms
                    held.append(sock.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield [Endpoint(HOST, s.getsockname()[1]) for s in listeners]
    stop.set()
    thread.join()
    for sock in listeners + held:
        sock.close()


def test_probes_of_many_silent_nodes_take_about_one_timeout(silent_hosts: list[Endpoint]) -> None:
    started = time.monotonic()
    probes = probe_nodes([(host, host, host) for host in silent_hosts], timeout=0.5)
    elapsed = time.monotonic() - started
    assert all(p.functions is None and p.store_items is p.twin_items is None for p in probes)
    assert len(probes) == len(silent_hosts)
    # 30 questions one after another would take 15 s; a generous bound, not a speed goal
    assert elapsed < 10, elapsed


# -- a real cluster, through --zookeeper only -------------------------------------------------


def gearctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI run where no .gearctl exists, with no GEARCTL_* variables and no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARCTL_")}
    env["HOME"] = str(cwd)
    return subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True,
                          text=True, timeout=120, check=False, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(ZooKeeper address, an empty working directory) of a running 3-node local cluster."""
    directory = tmp_path_factory.mktemp("operate")
    with local_cluster(directory / "cluster") as cluster_dir:
        zookeeper = json.loads((cluster_dir / "cluster.json").read_text())["zookeeper"]
        elsewhere = directory / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "cluster-dir").symlink_to(cluster_dir)  # for the test's own kill only
        yield zookeeper, elsewhere


def status(remote: tuple[str, Path], *more: str) -> tuple[int, dict[str, Any]]:
    zookeeper, cwd = remote
    result = gearctl("cluster", "status", "--zookeeper", zookeeper, "--json", *more, cwd=cwd)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.integration
def test_status_through_zookeeper_only(remote: tuple[str, Path]) -> None:
    code, found = status(remote)
    assert code == 0
    assert found["cluster"] == "local" and found["local"] is False
    assert [n["state"] for n in found["nodes"]] == ["serving"] * 3
    assert all(n["gearmand_up"] and n["store_up"] for n in found["nodes"])
    assert all(n["agent_pid"] is None for n in found["nodes"])  # PIDs: local clusters only
    assert [s["owner"]["node"] for s in found["stores"]] == ["node1", "node2", "node3"]
    table = gearctl("cluster", "status", "--zookeeper", remote[0], cwd=remote[1])
    assert table.returncode == 0 and "every node serving" in table.stdout


@pytest.mark.integration
def test_status_with_a_host_that_does_not_answer(
    remote: tuple[str, Path], silent_hosts: list[Endpoint]
) -> None:
    """A node whose host hangs (its record points at listeners that never answer) is shown
    down and the cluster degraded, after about one probe timeout (bound: generous)."""
    zk = KazooClient(hosts=remote[0], timeout=4)
    zk.start(timeout=5)
    ghost = ClusterPaths("local").store("ghost")
    hung = silent_hosts[0]
    zk.create(ghost, StoreRecord(str(hung), str(hung), "elsewhere", None).encode())
    try:
        started = time.monotonic()
        code, found = status(remote)
        elapsed = time.monotonic() - started
    finally:
        zk.delete(ghost)
        zk.stop()
        zk.close()
    node = next(n for n in found["nodes"] if n["name"] == "ghost")
    assert code == 3
    assert (node["state"], node["gearmand_up"], node["store_up"]) == ("down", False, False)
    assert elapsed < 15, elapsed  # the probes' timeout is 1 s; interpreter start included


@pytest.mark.integration
def test_a_mistyped_cluster_name_lists_the_real_ones_and_creates_nothing(
    remote: tuple[str, Path],
) -> None:
    zookeeper, cwd = remote
    for command in (("takeover", "pause"), ("cluster", "status"), ("takeover", "list")):
        result = gearctl(*command, "--zookeeper", zookeeper, "--cluster", "lcoal", cwd=cwd)
        assert result.returncode == 1, result.stdout
        assert "no cluster 'lcoal'" in result.stderr and "clusters there: local" in result.stderr
    zk = KazooClient(hosts=zookeeper, timeout=4)
    zk.start(timeout=5)
    try:
        assert zk.exists(ClusterPaths("lcoal").root) is None
        assert zk.exists(ClusterPaths("local").takeover_paused) is None
    finally:
        zk.stop()
        zk.close()
    assert gearctl("cluster", "status", "--bogus", cwd=cwd).returncode == 2


@pytest.mark.integration
def test_pause_resume_inspect_workers_and_history(remote: tuple[str, Path]) -> None:
    zookeeper, cwd = remote
    by_zk = ("--zookeeper", zookeeper)
    assert gearctl("takeover", "pause", *by_zk, cwd=cwd).returncode == 0
    assert status(remote)[1]["takeover_paused"] is True
    assert gearctl("takeover", "resume", *by_zk, cwd=cwd).returncode == 0
    assert status(remote)[1]["takeover_paused"] is False

    nodes = {n["name"]: n for n in status(remote)[1]["nodes"]}
    jobs = [Job("op-resize", f"u{n}", b"x", "normal") for n in range(20)]
    assert submit(Endpoint.parse(nodes["node3"]["gearman"]), jobs) == len(jobs)
    inspected = gearctl("store", "inspect", "node3", *by_zk, "--json", cwd=cwd)
    assert inspected.returncode == 0, inspected.stderr
    (group,) = [g for g in json.loads(inspected.stdout)["jobs"] if g["function"] == "op-resize"]
    assert (group["count"], group["incarnation"]) == (20, "live")
    listed = gearctl("workers", *by_zk, "--json", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout)["functions"] if r["function"] == "op-resize"]
    assert (row["queued"], row["running"], row["workers"]) == (20, 0, 0)
    assert row["oldest_age_s"] is not None and row["oldest_age_s"] >= 0
    table = gearctl("workers", *by_zk, cwd=cwd).stdout.splitlines()
    assert table[0].split() == ["function", "queued", "running", "workers", "oldest"]
    assert next(line for line in table if line.startswith("op-resize")).split()[1:4] == [
        "20", "0", "0"]  # fmt: skip

    # node loss (a survivor takes its store over); the PIDs come from the local status
    kill_node(node(status_json(cwd / "cluster-dir"), "node3"))
    deadline = time.monotonic() + 90
    while True:
        history = gearctl("takeover", "list", *by_zk, "--json", cwd=cwd)
        assert history.returncode == 0, history.stderr
        done = [t for t in json.loads(history.stdout) if t["outcome"].startswith("done")]
        if done:
            break
        assert time.monotonic() < deadline, history.stdout
        time.sleep(0.5)
    assert done[0]["store"] == "node3" and done[0]["jobs"] == len(jobs)
    parts = done[0]["parts"]  # spread over node1 and node2 (the default)
    assert [p["part"] for p in parts] == [0, 1] and all(p["done"] for p in parts)
    assert sum(p["jobs"] for p in parts) == len(jobs)
    text = gearctl("takeover", "list", *by_zk, cwd=cwd).stdout
    assert f"take-over of store node3 by {done[0]['by']}: done" in text
    assert "\n  part 1: node" in text  # node2, or node1 when it was quicker
    code, found = status(remote)
    assert code == 3 and {n["name"]: n["state"] for n in found["nodes"]}["node3"] == "down"


def test_version_and_check_config_on_the_command_line(tmp_path: Path) -> None:
    from cluster import __version__

    version = gearctl("--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"gearctl {__version__}")
    good = tmp_path / "agent.toml"
    good.write_text('[node]\nname = "n1"\ncluster = "prod"\n[gearmand]\nlisten = "10.0.0.11"\n'
                    '[store]\naddress = "10.0.0.21"\n[zookeeper]\nhosts = "zk1"\n')  # fmt: skip
    checked = gearctl("agent", "check-config", str(good), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert tomllib.loads(checked.stdout)["node"] == {"name": "n1", "cluster": "prod"}
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('name = "n1"', 'name = "n1"\nnmae = "x"'))
    refused = gearctl("agent", "check-config", str(bad), cwd=tmp_path)
    assert refused.returncode == 1 and "unknown field node.nmae" in refused.stderr
    assert refused.stdout == ""
