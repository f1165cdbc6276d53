"""Time from `kill -9` of a whole node to every orphaned job queued on a survivor (issue 4).

Per ZooKeeper session timeout and job count, a fresh 3-node local cluster (`gearctl cluster up`,
the session timeout written into every agent.toml). N pipelined background jobs go to node1; once
its agent has published their function names to ZooKeeper, node1's agent and gearmand (pids from
`cluster status --json`) get SIGKILL, and the survivors' admin `status` queue totals are polled
until they hold all N. The take-over record (`takeovers` of the status) gives who drained, when it
started and how long the drain took.

Goal: session timeout + 1 s + N / restore throughput (the median restore rate of
bench/results/restore_throughput.json for the nearest size; run restore_throughput.py first).

`--compare-spread` (issue 18) runs every case twice, side by side: one survivor drains the whole
store (a `--no-spread` cluster), then a cluster started with `--spread`, where the two survivors
drain a part each; the drain time (the claimer's take-over record: plan, every part, the sweep)
of the spread over the single one is the ratio (goal <= 0.6), with the jobs each survivor queued.
`--hosts netns` runs each node in a network namespace of its own (root; the drills' file lock).
`--pin-cores yes` pins each survivor's agent, gearmand and stores to a core of its own
(bench/hostcpu.py), as separate hosts would have them; `both` runs every case unpinned and then
pinned. Every case reports the CPU seconds each process used from the kill to the last job queued.

    .venv/bin/python bench/takeover_time.py [--quick] [--timeouts 2 4] [--sizes 10000 100000]
        [--compare-spread] [--hosts local|netns] [--pin-cores no|yes|both] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from typing import Any
from urllib.parse import unquote

import common
import hostcpu
import psutil
from common import RESULTS, Services, median, poll, table
from kazoo.client import KazooClient
from kazoo.protocol.states import EventType

from cluster.coord import ClusterPaths
from cluster.endpoint import Endpoint
from cluster.local import cluster as localcluster
from cluster.local.netns import HostNetwork
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


def one_case(
    services: Services,
    timeout: float,
    count: int,
    placement: localcluster.Placement | None = None,
    spread: bool = False,
    pinned: bool = False,
) -> dict[str, object]:
    cluster = services.cluster(3, session_timeout=timeout, placement=placement, spread=spread)
    zk: KazooClient | None = None
    try:
        victim, *survivors = (Endpoint.parse(n.gearman) for n in cluster.nodes)
        dead = cluster.nodes[0].name
        cores = hostcpu.pin(cluster, dead) if pinned else {}
        procs = {f"{node.name}:{role}": proc for node in cluster.nodes
                 for role, proc in hostcpu.node_processes(cluster, node.name).items()
                 if node.name != dead or role in ("store", "twin")}  # fmt: skip
        procs["bench"] = psutil.Process()
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
        baselines = [common.queued_total(s) or 0 for s in survivors]

        def per_survivor() -> list[int]:
            return [(common.queued_total(s, timeout=5.0) or 0) - b
                    for s, b in zip(survivors, baselines, strict=True)]  # fmt: skip

        def moved() -> int:
            return sum(per_survivor())

        expired: list[float] = []  # when node1's member record vanished (its session expired)
        zk.exists(paths.member(node["name"]), watch=lambda event: event.type == EventType.DELETED
                  and expired.append(time.perf_counter()))  # fmt: skip
        cpu_before = hostcpu.cpu_seconds(procs)
        killed_at = time.time()
        started = time.perf_counter()
        os.kill(node["agent_pid"], signal.SIGKILL)
        os.kill(node["gearmand_pid"], signal.SIGKILL)
        first = poll(lambda: moved() > 0 and time.perf_counter(), interval=0.01,
                     timeout=120, what="first orphaned job on a survivor")  # fmt: skip
        poll(lambda: moved() >= count, interval=0.01, timeout=600,
             what="every orphaned job on a survivor")  # fmt: skip
        total = time.perf_counter() - started
        cpu_after = hostcpu.cpu_seconds(procs)
        time.sleep(1.0)
        split = per_survivor()
        final = sum(split)
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
        "per_survivor": split,
        "spread": spread,
        "hosts": "netns" if placement and placement.node_netns else "local",
        "pinned_cores": cores,
        "cpu_s": {
            role: round(cpu_after[role] - cpu_before[role], 3)
            for role in procs
            if role in cpu_before and role in cpu_after
        },
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s timeout, 2,000 jobs")
    parser.add_argument("--timeouts", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--compare-spread",
        action="store_true",
        help="each case twice: one survivor drains, then two spread (issue 18)",
    )
    parser.add_argument(
        "--hosts",
        choices=("local", "netns"),
        default="local",
        help="netns: each node in a network namespace of its own (root)",
    )
    parser.add_argument(
        "--pin-cores",
        choices=("no", "yes", "both"),
        default="no",
        help="pin each survivor to a core of its own (yes), or run each case both ways (both)",
    )
    args = parser.parse_args()
    timeouts, sizes, repeats = ([2.0], [2000], 1) if args.quick else (
        args.timeouts, args.sizes, args.repeats)  # fmt: skip
    rates = restore_rates()

    results = []
    ways = (False, True) if args.compare_spread else (False,)
    pinning = {"no": (False,), "yes": (True,), "both": (False, True)}[args.pin_cores]
    with contextlib.ExitStack() as stack:
        placement = localcluster.Placement()
        if args.hosts == "netns":
            network = stack.enter_context(HostNetwork(3))
            placement = localcluster.Placement(
                services=network.bridge_address,
                node_hosts=tuple(h.address for h in network.members),
                node_netns=tuple(h.name for h in network.members),
            )
        services = stack.enter_context(Services("takeover"))
        for timeout in timeouts:
            for count in sizes:
                for _, pinned, spread in itertools.product(range(repeats), pinning, ways):
                    # side by side: single, then spread, each repeat (and each pinning)
                    result = one_case(services, timeout, count, placement, spread, pinned)
                    nearest = min(rates, key=lambda n: abs(n - count)) if rates else None
                    rate = rates[nearest] if nearest else FALLBACK_RESTORE_RATE
                    result["restore_rate"] = rate
                    result["goal_s"] = timeout + 1.0 + count / rate
                    results.append(result)
                    print(f"timeout {timeout}s, {count} jobs, "
                          f"{'spread' if spread else 'single'}{', pinned' if pinned else ''}: "
                          f"on survivors {result['per_survivor']} (claimer "
                          f"{result['drained_by']}) after {result['seconds']:.2f}s, drain "
                          f"{result['drain_s']:.2f}s (goal {result['goal_s']:.2f}s); CPU s "
                          f"{cpu_text(result['cpu_s'])}", flush=True)  # fmt: skip
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
    if args.compare_spread:
        print_spread_ratios(results)
    common.save("takeover_time", {"quick": args.quick, "hosts": args.hosts, "results": results})
    return 0


def cpu_text(cpu: dict[str, float]) -> str:
    """`node2:gearmand 1.23, ...` for the processes that used CPU, and their total."""
    busy = {role: s for role, s in cpu.items() if s >= 0.01}
    return f"{', '.join(f'{r} {s:.2f}' for r, s in busy.items())} (total {sum(busy.values()):.2f})"


def print_spread_ratios(results: list[dict[str, Any]]) -> None:
    """Per case and repeat: the single drain, the spread one, their ratio, the spread's split."""
    pairs = list(zip(results[::2], results[1::2], strict=True))
    print()
    print(table(
        ["jobs", "pinned", "single drain s", "spread drain s", "ratio (goal <= 0.6)",
         "spread per survivor", "most loaded vs even", "load average"],
        [[single["jobs"], "yes" if single["pinned_cores"] else "no", single["drain_s"],
          spread["drain_s"],
          f"{spread['drain_s'] / single['drain_s']:.2f}", spread["per_survivor"],
          f"+{max(spread['per_survivor']) / (spread['jobs'] / 2) - 1:.1%}",
          f"{spread['load_average'][0]:.1f}"]
         for single, spread in pairs],
    ))  # fmt: skip
    for pinned in sorted({bool(single["pinned_cores"]) for single, _ in pairs}):
        ratios = sorted(spread["drain_s"] / single["drain_s"] for single, spread in pairs
                        if bool(single["pinned_cores"]) == pinned)  # fmt: skip
        print(
            f"{'pinned' if pinned else 'unpinned'}: ratio median {median(ratios):.2f}, best "
            f"{ratios[0]:.2f}, worst {ratios[-1]:.2f} over {len(ratios)} pairs"
        )


if __name__ == "__main__":
    sys.exit(main())
