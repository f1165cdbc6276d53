"""Prometheus metrics, JSON logs and the Grafana dashboard of the node agent."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster import __version__
from cluster.config import load_config
from cluster.coord import MemberRecord, Outcome
from cluster.drill.workload import Job, numbered_jobs, submit
from cluster.endpoint import Endpoint
from cluster.errors import StoreError
from cluster.local.cluster import PORT_BLOCK, LocalCluster, write_agent_config
from cluster.logsetup import JsonFormatter, configure
from cluster.metrics import AgentMetrics
from cluster.process import free_port
from cluster.restore import RestoreReport
from tests.clusterctl import kill_node, local_cluster, status_json, wait_until
from tests.clusterctl import node as cluster_node
from tests.conftest import HOST, RunningGearmand, running_memcached
from tests.test_agent import AgentNode, make_node
from tests.twinstores import persist

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def scrape(metrics: AgentMetrics) -> Samples:
    return samples(generate_latest(metrics.registry).decode())


def nowhere() -> Endpoint:
    return Endpoint(HOST, free_port())  # nothing listens there


# -- hooks ------------------------------------------------------------------------------------


def test_metrics_need_a_store() -> None:
    with pytest.raises(ValueError, match="at least one store"):
        AgentMetrics("n1", nowhere(), ())


def test_hooks_count_what_the_agent_reports() -> None:
    metrics = AgentMetrics("n1", nowhere(), (nowhere(),))
    record = MemberRecord("n1", "g", "s", agent_pid=1, gearmand_pid=2, state="serving")
    metrics.record(record)
    metrics.record(record.with_changes(state="restarting", restarts=2, deferred_jobs=3))
    metrics.record(record.with_changes(restarts=2))  # the same restarts are not counted again
    metrics.restored(RestoreReport(expected=10, moved=8, deferred=2, seconds=0.4))
    metrics.moved(5)
    metrics.takeover_started()
    metrics.takeover_finished(Outcome.DONE, 7)
    metrics.takeover_started()
    metrics.takeover_finished(Outcome.INTERRUPTED, 3)
    metrics.parts_drained(4)  # parts of another claimer's spread drain
    metrics.zookeeper_state("SUSPENDED")
    metrics.fenced()
    metrics.count_error(StoreError("store down"))
    metrics.count_error(ValueError("not a store error"))
    found = scrape(metrics)
    assert value(found, "gearctl_gearmand_restarts_total", node="n1") == 2
    assert value(found, "gearctl_deferred_jobs", node="n1") == 0
    assert value(found, "gearctl_restore_jobs_total", node="n1", result="moved") == 13
    assert value(found, "gearctl_restore_jobs_total", node="n1", result="deferred") == 2
    assert value(found, "gearctl_restore_duration_seconds_count", node="n1") == 1
    assert value(found, "gearctl_restore_duration_seconds_bucket", node="n1", le="0.5") == 1
    assert value(found, "gearctl_takeovers_total", node="n1", outcome="started") == 2
    assert value(found, "gearctl_takeovers_total", node="n1", outcome="done") == 1
    assert value(found, "gearctl_takeovers_total", node="n1", outcome="interrupted") == 1
    assert value(found, "gearctl_takeover_drained_jobs_total", node="n1") == 14
    assert value(found, "gearctl_fence_events_total", node="n1") == 1
    assert value(found, "gearctl_agent_state", node="n1", gearctl_agent_state="fenced") == 1
    assert value(found, "gearctl_agent_state", node="n1", gearctl_agent_state="serving") == 0
    zk = {"node": "n1", "gearctl_zookeeper_state": "suspended"}
    assert value(found, "gearctl_zookeeper_state", **zk) == 1
    # one failed store request by the agent, one by this scrape (nothing listens there)
    assert value(found, "gearctl_store_errors_total", node="n1") == 2


def test_takeover_duration_build_info_and_process_metrics() -> None:
    metrics = AgentMetrics("n1", nowhere(), (nowhere(),))
    metrics.takeover_started()
    assert (value(scrape(metrics), "gearctl_takeover_start_time_seconds", node="n1") or 0) > 0
    metrics.takeover_finished(Outcome.DONE, 4)
    found = scrape(metrics)
    assert value(found, "gearctl_takeover_start_time_seconds", node="n1") == 0
    assert value(found, "gearctl_takeover_duration_seconds_count", node="n1") == 1
    build = [labels for name, labels in found if name == "gearctl_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0]
    assert (value(found, "process_open_fds") or 0) > 0
    assert (value(found, "process_resident_memory_bytes") or 0) > 0
    assert value(found, "process_cpu_seconds_total") is not None


def test_scrape_reports_gearmand_and_store_down_when_nothing_answers() -> None:
    store = nowhere()
    found = scrape(AgentMetrics("n1", nowhere(), (store,), timeout=0.5))
    assert value(found, "gearctl_gearmand_up", node="n1") == 0
    assert value(found, "gearctl_store_up", node="n1", store=str(store)) == 0
    assert value(found, "gearctl_store_items", node="n1", store=str(store)) is None


def test_agents_in_one_process_keep_separate_registries() -> None:
    first, second = (
        AgentMetrics("a", nowhere(), (nowhere(),)),
        AgentMetrics("b", nowhere(), (nowhere(),)),
    )
    first.fenced()
    assert value(scrape(first), "gearctl_fence_events_total", node="a") == 1
    assert value(scrape(second), "gearctl_fence_events_total", node="b") == 0


@pytest.mark.integration
def test_scrape_reads_queued_jobs_per_function_and_store_stats(gearmand: RunningGearmand) -> None:
    jobs = numbered_jobs(30)
    assert submit(gearmand.endpoint, jobs) == len(jobs)
    found = scrape(AgentMetrics("n1", gearmand.endpoint, (gearmand.store,)))
    store = {"node": "n1", "store": str(gearmand.store)}
    assert value(found, "gearctl_gearmand_up", node="n1") == 1
    assert value(found, "gearctl_store_up", **store) == 1
    for function in {job.function for job in jobs}:
        count = sum(job.function == function for job in jobs)
        assert value(found, "gearctl_queued_jobs", node="n1", function=function) == count
        assert value(found, "gearctl_function_workers", node="n1", function=function) == 0
        assert value(found, "gearctl_running_jobs", node="n1", function=function) == 0
        age = value(found, "gearctl_oldest_job_age_seconds", node="n1", function=function)
        assert age is not None and 0 <= age < 600
    assert value(found, "gearctl_store_items", **store) == len(jobs)
    assert (value(found, "gearctl_store_bytes", **store) or 0) > 0
    assert (value(found, "gearctl_store_limit_bytes", **store) or 0) >= 256 * 1024 * 1024


@pytest.mark.integration
def test_scrape_reads_both_twin_stores(gearmand: RunningGearmand, tmp_path: Path) -> None:
    """Per-store series for each twin; a job waiting in the twin counts for the oldest age."""
    older, newer = numbered_jobs(7, prefix="old"), numbered_jobs(30)
    with running_memcached(tmp_path, "twin") as twin:
        persist(twin, "g0_", older, tmp_path)
        assert submit(gearmand.endpoint, newer) == len(newer)
        found = scrape(AgentMetrics("n1", gearmand.endpoint, (gearmand.store, twin)))
        silent = nowhere()
        lost = scrape(AgentMetrics("n1", gearmand.endpoint, (gearmand.store, silent), 0.5))
    for address, count in ((gearmand.store, len(newer)), (twin, len(older))):
        assert value(found, "gearctl_store_up", node="n1", store=str(address)) == 1
        assert value(found, "gearctl_store_items", node="n1", store=str(address)) == count
    age = value(found, "gearctl_oldest_job_age_seconds", node="n1", function=older[0].function)
    assert age is not None and age >= 0
    assert value(lost, "gearctl_store_up", node="n1", store=str(gearmand.store)) == 1
    assert value(lost, "gearctl_store_up", node="n1", store=str(silent)) == 0
    assert value(lost, "gearctl_store_items", node="n1", store=str(silent)) is None


# -- the HTTP endpoint ------------------------------------------------------------------------


def test_serves_metrics_over_http_until_stopped() -> None:
    metrics = AgentMetrics("n1", nowhere(), (nowhere(),))
    endpoint = nowhere()
    assert metrics.serve(endpoint)
    try:
        text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5).read().decode()
        assert value(samples(text), "gearctl_fence_events_total", node="n1") == 0
    finally:
        metrics.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5)


def test_port_in_use_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        endpoint = Endpoint(HOST, taken.getsockname()[1])
        metrics = AgentMetrics("n1", nowhere(), (nowhere(),))
        with caplog.at_level(logging.ERROR, logger="gearctl.metrics"):
            assert not metrics.serve(endpoint)
    assert f"metrics: cannot listen on {endpoint}" in caplog.text
    assert "running without metrics" in caplog.text
    assert not AgentMetrics("n1", nowhere(), (nowhere(),)).serve(None)  # metrics off


# -- JSON logs --------------------------------------------------------------------------------


def test_json_log_line_has_the_standard_fields_and_extras() -> None:
    logger = logging.getLogger("gearctl.test")
    record = logger.makeRecord("gearctl.test", logging.WARNING, __file__, 1, "moved %d jobs",
                               (12,), None, extra={"store": "node2", "jobs": 12})  # fmt: skip
    line = JsonFormatter("node1").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "gearctl.test"
    assert entry["node"] == "node1"
    assert entry["message"] == "moved 12 jobs"
    assert (entry["store"], entry["jobs"]) == ("node2", 12)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])
    assert "args" not in entry and "msg" not in entry


def test_json_log_keeps_the_traceback_on_one_line() -> None:
    stream = io.StringIO()
    configure("json", "node1", stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("gearctl.test").exception("it failed")
    finally:
        configure("text", "node1", io.StringIO())
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "it failed"
    assert "RuntimeError: boom" in entry["exc"]


def test_text_log_and_unknown_format() -> None:
    stream = io.StringIO()
    configure("text", "node1", stream)
    logging.getLogger("gearctl.test").info("plain")
    assert stream.getvalue().rstrip().endswith("INFO gearctl.test: plain")
    with pytest.raises(ValueError, match="use one of text, json"):
        configure("yaml", "node1", stream)


# -- local cluster and dashboard --------------------------------------------------------------


def test_local_cluster_gives_every_agent_a_metrics_port(tmp_path: Path) -> None:
    standard = LocalCluster.plan(tmp_path, 3, 0, 4.0, 1)
    assert [n.metrics for n in standard.nodes] == [f"127.0.0.1:{9400 + i}" for i in range(3)]
    based = LocalCluster.plan(tmp_path, 2, 20000, 4.0, 1)
    assert [n.metrics for n in based.nodes] == ["127.0.0.1:20210", "127.0.0.1:20211"]
    config = load_config(write_agent_config(based, based.nodes[1]))
    assert config.metrics == Endpoint("127.0.0.1", 20211)


def test_plan_without_metrics_writes_no_metrics_section(tmp_path: Path) -> None:
    old = LocalCluster.plan(tmp_path, 1, 0, 4.0, 1)
    old.nodes[0].metrics = None  # a cluster.json written before metrics existed
    assert load_config(write_agent_config(old, old.nodes[0])).metrics is None


def test_local_cluster_gives_every_node_twin_stores(tmp_path: Path) -> None:
    standard = LocalCluster.plan(tmp_path, 2, 0, 4.0, 1)
    assert [n.stores for n in standard.nodes] == [
        {"store": f"127.0.0.1:{11211 + i}", "twin": f"127.0.0.1:{11311 + i}"} for i in range(2)
    ]
    based = LocalCluster.plan(tmp_path, 2, 20000, 4.0, 1)
    assert [n.twin for n in based.nodes] == ["127.0.0.1:20310", "127.0.0.1:20311"]
    assert max(int(n.twin.split(":")[1]) for n in based.nodes) < 20000 + PORT_BLOCK
    config = load_config(write_agent_config(based, based.nodes[1]))
    assert config.stores == (Endpoint("127.0.0.1", 20111), Endpoint("127.0.0.1", 20311))


def test_plan_saved_before_twin_stores_keeps_one_store(tmp_path: Path) -> None:
    old = LocalCluster.plan(tmp_path, 1, 0, 4.0, 1)
    old.nodes[0].twin = None  # a cluster.json written before twin stores existed
    old.save()
    assert "twin" not in (tmp_path / "cluster.json").read_text()
    loaded = LocalCluster.load(tmp_path)
    assert loaded is not None and loaded.nodes[0].stores == {"store": "127.0.0.1:11211"}
    assert load_config(write_agent_config(loaded, loaded.nodes[0])).twin is None


def exposed_names(metrics: AgentMetrics) -> set[str]:
    """Every sample name the registry can expose (labelled series included)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "info": ["_info"]}  # fmt: skip
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }


def test_dashboard_is_valid_json_using_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\b(?:gearctl|process)_[a-z_]+", expr)}
    available = exposed_names(AgentMetrics("n1", nowhere(), (nowhere(),), timeout=0.2))
    assert used, "the dashboard queries no gearctl metric"
    assert used <= available, f"unknown metrics: {sorted(used - available)}"
    wanted = {"gearctl_gearmand_up", "gearctl_gearmand_restarts_total", "gearctl_queued_jobs",
              "gearctl_store_items", "gearctl_store_bytes", "gearctl_takeovers_total",
              "gearctl_fence_events_total", "gearctl_zookeeper_state",
              "gearctl_restore_duration_seconds_bucket", "gearctl_function_workers",
              "gearctl_running_jobs", "gearctl_oldest_job_age_seconds",
              "gearctl_takeover_duration_seconds_bucket", "gearctl_takeover_start_time_seconds",
              "gearctl_takeover_paused", "gearctl_gearmand_start_time_seconds",
              "gearctl_zookeeper_session_timeout_seconds", "gearctl_build_info"}  # fmt: skip
    assert wanted <= used


# -- a real agent -----------------------------------------------------------------------------


def scrape_http(endpoint: Endpoint) -> Samples:
    return samples(urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode())


@pytest.fixture
def metered(tmp_path: Path, memcached: Endpoint, zookeeper: Endpoint) -> Iterator[AgentNode]:
    """An agent with metrics on a free port and JSON logs; serving."""
    agent = make_node(tmp_path, memcached, zookeeper, f"m{free_port()}")
    metrics = Endpoint(HOST, free_port())
    with agent.config.open("a") as config:
        config.write(f'[metrics]\naddress = "{metrics.host}"\nport = {metrics.port}\n')
        config.write('[log]\nformat = "json"\n')
    agent.start()
    agent.wait_serving()
    yield agent
    agent.stop()


@pytest.mark.integration
def test_agent_metrics_follow_a_gearmand_kill(metered: AgentNode) -> None:
    metrics = load_config(metered.config).metrics
    assert metrics is not None
    node = metered.name
    jobs = numbered_jobs(200)
    assert submit(metered.gearman, jobs) == len(jobs)
    before = scrape_http(metrics)
    assert value(before, "gearctl_gearmand_up", node=node) == 1
    assert value(before, "gearctl_gearmand_restarts_total", node=node) == 0
    assert value(before, "gearctl_agent_state", node=node, gearctl_agent_state="serving") == 1
    zk = {"node": node, "gearctl_zookeeper_state": "connected"}
    assert value(before, "gearctl_zookeeper_state", **zk) == 1
    assert value(before, "gearctl_zookeeper_session_timeout_seconds", node=node) == 4.0
    assert value(before, "gearctl_takeover_paused", node=node) == 0
    started = value(before, "gearctl_gearmand_start_time_seconds", node=node)
    assert started is not None and abs(started - time.time()) < 3600
    store = str(load_config(metered.config).store)
    assert value(before, "gearctl_store_items", node=node, store=store) == len(jobs)

    metered.wait_functions_published()  # else the restore defers the jobs (cluster.restore)
    psutil.Process(metered.member()["gearmand_pid"]).kill()
    metered.wait_serving(restarts=1)
    after = scrape_http(metrics)
    assert value(after, "gearctl_gearmand_restarts_total", node=node) == 1
    assert value(after, "gearctl_restore_jobs_total", node=node, result="moved") == len(jobs)
    assert value(after, "gearctl_restore_duration_seconds_count", node=node) == 1
    assert (value(after, "gearctl_gearmand_start_time_seconds", node=node) or 0) > started

    log_lines = (metered.run_dir / "agent.out").read_text().splitlines()
    entries = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(e["message"].startswith(f"metrics on http://{metrics}/metrics") for e in entries)
    assert all(e["node"] == node for e in entries)


@pytest.mark.integration
def test_agent_serves_gearman_when_its_metrics_port_is_taken(
    tmp_path: Path, memcached: Endpoint, zookeeper: Endpoint
) -> None:
    agent = make_node(tmp_path, memcached, zookeeper, f"t{free_port()}")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        with agent.config.open("a") as config:
            config.write(f"[metrics]\nport = {taken.getsockname()[1]}\n")
        agent.start()
        try:
            agent.wait_serving()
            out = (agent.run_dir / "agent.out").read_text()
            assert f"metrics: cannot listen on {HOST}:{taken.getsockname()[1]}" in out
            assert "Traceback" not in out
        finally:
            agent.stop()


def total(agents: dict[str, Endpoint], name: str, **labels: str) -> float:
    """The sum of one series over several agents (node -> metrics endpoint)."""
    return sum(value(scrape_http(e), name, node=n, **labels) or 0 for n, e in agents.items())


@pytest.mark.integration
def test_local_cluster_survivor_counts_its_takeover(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "cluster") as directory:
        status = status_json(directory)
        for node in status["nodes"]:
            up = value(scrape_http(Endpoint.parse(node["metrics"])), "gearctl_gearmand_up",
                       node=node["name"])  # fmt: skip
            assert up == 1, node
        victim = cluster_node(status, "node2")
        jobs = [Job("reverse", f"u{n}", b"x", "normal") for n in range(50)]
        assert submit(Endpoint.parse(victim["gearman"]), jobs) == len(jobs)
        kill_node(victim)
        wait_until(directory, lambda s: any(t["outcome"] == "done" for t in s["takeovers"]))
        survivors = {
            n["name"]: Endpoint.parse(n["metrics"]) for n in status["nodes"] if n is not victim
        }
        deadline = time.monotonic() + 30  # the counter follows the take-over record closely
        while total(survivors, "gearctl_takeovers_total", outcome="done") < 1:
            assert time.monotonic() < deadline, "no survivor counted the take-over"
            time.sleep(0.1)
        assert total(survivors, "gearctl_takeovers_total", outcome="done") == 1
        assert total(survivors, "gearctl_takeover_drained_jobs_total") == len(jobs)
