"""Time from `kill -9` of gearmand to serving again under the agent (issues 3 and 18).

Two one-node local clusters side by side in one run (`gearctl cluster up`): one with a single
store per node (as before issue 18), one with twin stores. For each store size (jobs queued, and
so stored) the runs alternate between the two. Each run starts from a freshly started agent (so
every kill is the first death in the agent's backoff window, which restarts at once), waits until
its member record in ZooKeeper says `serving`, then SIGKILLs gearmand and polls the gearmand port
every `--interval` from the instant of the kill:

- serving: the admin `status` command answers (cluster.gearman.admin.is_serving) from a new gearmand
  (admin `getpid` differs from the killed pid);
- restored (runs with queued jobs): the agent's member record in ZooKeeper is `serving` again with
  the new gearmand pid, i.e. the restore of the store has ended. The queue is then checked.

Restore rate = jobs / the restore routine's own seconds (the agent logs both). Its ceiling is
measured in every run, right before the kill (the machine's load moves from one minute to the
next): the pipelined submit rate of the same number of jobs, same payload size, into a fresh
gearmand on a fresh, empty memcached (`Services.submit_ceiling`; every restored job is
re-persisted, as every submitted one is). Each run's ratio is its restore rate over its own
ceiling; the summary gives their medians. The wall rate, jobs / (restored - serving), adds the
agent's steps around the restore.

    .venv/bin/python bench/kill_to_serving.py [--quick] [--sizes 0,10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

import common
from common import FUNCTIONS, Services, median, poll, table

from cluster import coord
from cluster.coord import MemberRecord, NodeState
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient, is_serving
from cluster.local import cluster as localcluster

RESTORE_TIMEOUT = 900.0  # seconds a restore of the largest store may take on a loaded machine


class Node:
    def __init__(self, cluster: localcluster.LocalCluster) -> None:
        self.cluster = cluster
        self.name = cluster.nodes[0].name
        self.gearman = Endpoint.parse(cluster.nodes[0].gearman)
        self.coord = coord.connect(cluster.zookeeper, cluster.cluster, 10.0)

    def member(self) -> MemberRecord | None:
        entry = self.coord.member_entry(self.name)
        return entry.record if entry else None

    def serving_member(self) -> MemberRecord | None:
        record = self.member()
        if record and record.state == NodeState.SERVING and record.gearmand_pid:
            return record
        return None

    def fresh_agent(self) -> MemberRecord:
        """Restart the agent (a fresh backoff window) and wait until it serves."""
        common.stop_agent(self.cluster.processes[f"agent:{self.name}"].pid)
        self.cluster = localcluster.up(self.cluster.dir, 1, 0, lambda _m: None,
                                       serving_timeout=RESTORE_TIMEOUT)  # fmt: skip
        return poll(self.serving_member, interval=0.05, timeout=30, what="agent serving")

    @property
    def agent_log(self) -> Path:
        return self.cluster.node_dir(self.name) / "log" / "agent.log"

    def names_published(self) -> bool:
        return set(FUNCTIONS) <= self.coord.function_names()

    def close(self) -> None:
        self.coord.close()


def new_gearmand_pid(endpoint: Endpoint, old: int) -> bool:
    try:
        pid = AdminClient(endpoint, timeout=0.25).getpid()
    except GearctlError:
        return False
    return pid != old and is_serving(endpoint, 0.25)


def one_run(
    services: Services, node: Node, jobs: int, interval: float
) -> dict[str, float | int | None]:
    before = node.fresh_agent()
    ceiling = services.submit_ceiling(jobs) if jobs else None
    queued_before = common.queued_total(node.gearman, timeout=30.0)
    old = before.gearmand_pid
    assert old is not None
    log_offset = node.agent_log.stat().st_size
    started = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    poll(lambda: new_gearmand_pid(node.gearman, old), interval=interval, timeout=120,
         what="gearmand serving again")  # fmt: skip
    serving = time.perf_counter() - started
    restored = None
    if jobs:
        poll(lambda: (m := node.serving_member()) and m.gearmand_pid != old, interval=0.01,
             timeout=RESTORE_TIMEOUT, what="member record serving")  # fmt: skip
        restored = time.perf_counter() - started
    queued_after = common.queued_total(node.gearman, timeout=30.0)
    moved, seconds = restores_logged(node.agent_log, log_offset)
    rate = moved / seconds if seconds else None
    return {"jobs": jobs, "serving_s": serving, "restored_s": restored,
            "restore_jobs_per_s": rate, "ceiling_jobs_per_s": ceiling,
            "restore_to_ceiling": rate / ceiling if rate and ceiling else None,
            "restore_wall_jobs_per_s": jobs / (restored - serving) if restored else None,
            "queued_before": queued_before, "queued_after": queued_after}  # fmt: skip


RESTORED = re.compile(r"restored (\d+) jobs from \S+ in ([\d.]+)s")


def restores_logged(agent_log: Path, offset: int) -> tuple[int, float]:
    """(jobs, seconds) of the restores the agent logged after `offset` (the restore routine's
    own time: listing, reading, submitting, deleting)."""
    with agent_log.open("rb") as log:
        log.seek(offset)
        found = RESTORED.findall(log.read().decode(errors="replace"))
    return sum(int(n) for n, _ in found), sum(float(s) for _, s in found)


LAYOUTS = ("one store", "twin stores")
GOAL_S = 0.2
GOAL_RATIO = 0.9  # restore rate / the same round's submit ceiling


def runs_at(size: int, args: argparse.Namespace) -> int:
    return args.runs if size <= 10_000 else args.large_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 runs, 0 and 1,000 jobs")
    parser.add_argument("--sizes", default="0,10000,100000,1000000", help="jobs stored, by size")
    parser.add_argument("--runs", type=int, default=5, help="runs per layout up to 10k jobs")
    parser.add_argument("--large-runs", type=int, default=5, help="runs per layout above 10k")
    parser.add_argument("--store-mb", type=int, default=1024, help="each memcached's -m")
    parser.add_argument("--interval", type=float, default=0.002, help="poll interval (s)")
    parser.add_argument("--name", default="kill_to_serving", help="bench/results/<name>.json")
    args = parser.parse_args()
    sizes = [0, 1000] if args.quick else [int(n) for n in args.sizes.split(",")]
    if args.quick:
        args.runs = args.large_runs = 2

    results: list[dict[str, object]] = []
    with Services("kill") as services:
        nodes = {
            layout: Node(services.cluster(1, twins=layout == "twin stores",
                                          store_mb=args.store_mb))
            for layout in LAYOUTS
        }  # fmt: skip
        stored = dict.fromkeys(LAYOUTS, 0)
        try:
            for size in sizes:
                for layout, node in nodes.items():
                    more = size - stored[layout]
                    if more > 0:
                        seconds = common.submit(node.gearman, common.jobs(more, f"s{size}"))
                        stored[layout] = size
                        # their keys split only once the agent published the function names
                        poll(node.names_published, interval=0.05, timeout=30,
                             what="function names published")  # fmt: skip
                        print(f"{layout}: {more} jobs submitted at {more / seconds:,.0f} jobs/s",
                              flush=True)  # fmt: skip
                for run in range(runs_at(size, args)):
                    for layout, node in nodes.items():
                        result = {"layout": layout,
                                  **one_run(services, node, size, args.interval)}  # fmt: skip
                        rate, ceiling = result["restore_jobs_per_s"], result["ceiling_jobs_per_s"]
                        results.append(result)
                        print(f"{layout:>11}, {size:>7} stored, run {run + 1}: serving after "
                              f"{result['serving_s']:.3f}s"
                              + (f", restored after {result['restored_s']:.3f}s"
                                 if result["restored_s"] else "")
                              + (f", restore {rate:,.0f} jobs/s, ceiling {ceiling:,.0f} jobs/s"
                                 if rate and ceiling else "")
                              + f", queued {result['queued_after']}", flush=True)  # fmt: skip
                # saved after each size: a later size that fails keeps what was measured
                report(args, sizes[: sizes.index(size) + 1], results)
        finally:
            for node in nodes.values():
                node.close()
    return 0


def report(args: argparse.Namespace, sizes: list[int], results: list[dict[str, object]]) -> None:
    """Print the summary of the sizes measured so far and save it with every run."""
    summary = []
    for size in sizes:
        for layout in LAYOUTS:
            mine = [r for r in results if r["jobs"] == size and r["layout"] == layout]
            serving = [float(r["serving_s"]) for r in mine]  # type: ignore[arg-type]
            restored = [float(r["restored_s"]) for r in mine if r["restored_s"] is not None]  # type: ignore[arg-type]
            rates = [float(r["restore_jobs_per_s"]) for r in mine if r["restore_jobs_per_s"]]  # type: ignore[arg-type]
            wall = [float(r["restore_wall_jobs_per_s"]) for r in mine  # type: ignore[arg-type]
                    if r["restore_wall_jobs_per_s"]]  # fmt: skip
            ceilings = [float(r["ceiling_jobs_per_s"]) for r in mine if r["ceiling_jobs_per_s"]]  # type: ignore[arg-type]
            ratios = [float(r["restore_to_ceiling"]) for r in mine if r["restore_to_ceiling"]]  # type: ignore[arg-type]
            summary.append({
                "layout": layout,
                "jobs": size,
                "runs": len(mine),
                "serving_median_s": median(serving),
                "serving_max_s": max(serving),
                "restored_median_s": median(restored) if restored else None,
                "restored_max_s": max(restored) if restored else None,
                "restore_jobs_per_s_median": median(rates) if rates else None,
                "restore_wall_jobs_per_s_median": median(wall) if wall else None,
                "ceiling_jobs_per_s_median": median(ceilings) if ceilings else None,
                "restore_to_ceiling_median": median(ratios) if ratios else None,
                "restore_to_ceiling_min": min(ratios) if ratios else None,
                "all_jobs_back": all(r["queued_after"] == size for r in mine),
            })  # fmt: skip
    print()
    print(table(
        ["layout", "jobs stored", "runs", "serving median s", "serving max s",
         "restored median s", "restore jobs/s", "ceiling jobs/s", "ratio", "ratio min",
         "all back", f"goal < {GOAL_S} s", f"ratio >= {GOAL_RATIO}"],
        [[s["layout"], s["jobs"], s["runs"], s["serving_median_s"], s["serving_max_s"],
          _or_dash(s["restored_median_s"]), _or_dash(s["restore_jobs_per_s_median"]),
          _or_dash(s["ceiling_jobs_per_s_median"]), _or_dash(s["restore_to_ceiling_median"]),
          _or_dash(s["restore_to_ceiling_min"]), s["all_jobs_back"],
          "met" if s["serving_median_s"] < GOAL_S else "MISSED",
          _goal(s["restore_to_ceiling_median"])]
         for s in summary],
    ))  # fmt: skip
    common.save(
        args.name,
        {"quick": args.quick, "goal_s": GOAL_S, "goal_ratio": GOAL_RATIO,
         "interval_s": args.interval, "summary": summary, "runs": results},
    )  # fmt: skip


def _or_dash(value: object) -> object:
    return "-" if value is None else value


def _goal(ratio: object) -> str:
    if not isinstance(ratio, float):
        return "-"
    return "met" if ratio >= GOAL_RATIO else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
