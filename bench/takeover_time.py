"""Time from `kill -9` of a whole node to every orphaned job queued on a survivor (issue 4).

Per ZooKeeper session timeout and job count, a fresh 3-node local cluster (`gearctl cluster up`,
the session timeout written into every agent.toml). N pipelined background jobs go to node1; once
its agent has published their function names to ZooKeeper, node1's agent and gearmand (pids from
`cluster status --json`) get SIGKILL, and the survivors' admin `status` queue totals are polled
until they hold all N. The take-over record (`takeovers` of the status) gives who drained, when it
started and how long the drain took.

Goal: session timeout + 1 s + N / restore throughput (the median restore rate of
bench/results/restore_throughput.json for the nearest size; run restore_throughput.py first).

    .venv/bin/python bench/takeover_time.py [--quick] [--timeouts 2 4] [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from urllib.parse import unquote

import common
from common import RESULTS, Services, poll, table
from kazoo.client import KazooClient
from kazoo.protocol.states import EventType

from cluster.coord import ClusterPaths
from cluster.endpoint import Endpoint
from cluster.local.status import collect

FALLBACK_RESTORE_RATE = 10_000.0  # jobs/s, used only when restore_throughput.json is missing


def restore_rates() -> dict[int, float]:
    try:
        data = json.loads((RESULTS / "restore_throughput.json").read_text())
    except (OSError, ValueError):
        return {}
    if data.get("quick"):
        return {}
    return {s["jobs"]: s["restore_rate_median"] for s in data["summary"]}


def functions_published(zk: KazooClient, path: str) -> bool:
    try:
        names = {unquote(child) for child in zk.get_children(path)}
    except Exception:
        return False
    return set(common.FUNCTIONS) <= names


def one_case(services: Services, timeout: float, count: int) -> dict[str, object]:
    cluster = services.cluster(3, session_timeout=timeout)
    zk: KazooClient | None = None
    try:
        victim, *survivors = (Endpoint.parse(n.gearman) for n in cluster.nodes)
        common.submit(victim, common.jobs(count))
        paths = ClusterPaths(cluster.cluster)
        zk = KazooClient(hosts=cluster.zookeeper, timeout=10.0)
        zk.start(timeout=10.0)
        poll(lambda: functions_published(zk, paths.functions), interval=0.05, timeout=30,
             what="function names in ZooKeeper")  # fmt: skip
        status = collect(cluster)
        node = status["nodes"][0]
        if node["queued_jobs"] != count:
            raise SystemExit(f"node1 queues {node['queued_jobs']} jobs, not {count}")
        baseline = sum(common.queued_total(s) or 0 for s in survivors)

        def moved() -> int:
            return sum(common.queued_total(s, timeout=5.0) or 0 for s in survivors) - baseline

        expired: list[float] = []  # when node1's member record vanished (its session expired)
        zk.exists(paths.member(node["name"]), watch=lambda event: event.type == EventType.DELETED
                  and expired.append(time.perf_counter()))  # fmt: skip
        killed_at = time.time()
        started = time.perf_counter()
        os.kill(node["agent_pid"], signal.SIGKILL)
        os.kill(node["gearmand_pid"], signal.SIGKILL)
        first = poll(lambda: moved() > 0 and time.perf_counter(), interval=0.01,
                     timeout=120, what="first orphaned job on a survivor")  # fmt: skip
        poll(lambda: moved() >= count, interval=0.01, timeout=600,
             what="every orphaned job on a survivor")  # fmt: skip
        total = time.perf_counter() - started
        time.sleep(1.0)
        final = moved()
        takeovers = poll(lambda: [t for t in collect(cluster)["takeovers"]
                                  if t["store"] == "node1" and t["outcome"] != "running"],
                         interval=0.1, timeout=30, what="take-over record")  # fmt: skip
    finally:
        if zk is not None:
            zk.stop()
            zk.close()
        services.cluster_down(cluster)
    record = takeovers[-1]
    return {
        "session_timeout_s": timeout,
        "jobs": count,
        "seconds": total,
        "first_job_s": first - started,
        "session_expired_after_s": expired[0] - started if expired else None,
        "takeover_started_after_s": record["started"] - killed_at,
        "drain_s": record["seconds"],
        "drained_by": record["by"],
        "drained_jobs": record["jobs"],
        "outcome": record["outcome"],
        "queued_on_survivors": final,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s timeout, 2,000 jobs")
    parser.add_argument("--timeouts", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    timeouts, sizes, repeats = ([2.0], [2000], 1) if args.quick else (
        args.timeouts, args.sizes, args.repeats)  # fmt: skip
    rates = restore_rates()

    results = []
    with Services("takeover") as services:
        for timeout in timeouts:
            for count in sizes:
                for _ in range(repeats):
                    result = one_case(services, timeout, count)
                    nearest = min(rates, key=lambda n: abs(n - count)) if rates else None
                    rate = rates[nearest] if nearest else FALLBACK_RESTORE_RATE
                    result["restore_rate"] = rate
                    result["goal_s"] = timeout + 1.0 + count / rate
                    results.append(result)
                    print(f"timeout {timeout}s, {count} jobs: all on {result['drained_by']} "
                          f"after {result['seconds']:.2f}s (goal {result['goal_s']:.2f}s)",
                          flush=True)  # fmt: skip
    print()
    print(table(
        ["session timeout s", "jobs", "kill -> all queued s", "take-over began s", "drain s",
         "queued on survivors", "goal s", "goal"],
        [[r["session_timeout_s"], r["jobs"], r["seconds"], r["takeover_started_after_s"],
          r["drain_s"], r["queued_on_survivors"], r["goal_s"],
          "met" if r["seconds"] <= r["goal_s"] else "MISSED"] for r in results],
    ))  # fmt: skip
    print(
        "(goal = session timeout + 1 s + jobs / restore rate "
        f"{'of restore_throughput.json' if rates else f'{FALLBACK_RESTORE_RATE:.0f}/s'})"
    )
    common.save("takeover_time", {"quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
