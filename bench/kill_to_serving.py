"""Time from `kill -9` of gearmand to serving again under the agent (issue 3).

A one-node local cluster (`gearctl cluster up`). Each run starts from a freshly started agent (so
every kill is the first death in the agent's backoff window, which restarts at once), waits until
its member record in ZooKeeper says `serving`, then SIGKILLs gearmand and polls the gearmand port
every `--interval` from the instant of the kill:

- serving: the admin `status` command answers (cluster.gearman.admin.is_serving) from a new gearmand
  (admin `getpid` differs from the killed pid);
- restored (runs with queued jobs): the agent's member record in ZooKeeper is `serving` again with
  the new gearmand pid, i.e. the restore of the store has ended. The queue is then checked.

    .venv/bin/python bench/kill_to_serving.py [--quick] [--runs 10] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import common
from common import Services, median, poll, table

from cluster import coord
from cluster.coord import MemberRecord, NodeState
from cluster.endpoint import Endpoint
from cluster.errors import GearctlError
from cluster.gearman.admin import AdminClient, is_serving
from cluster.local import cluster as localcluster


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
        self.cluster = localcluster.up(self.cluster.dir, 1, 0, lambda _m: None)
        return poll(self.serving_member, interval=0.05, timeout=120, what="agent serving")

    def close(self) -> None:
        self.coord.close()


def new_gearmand_pid(endpoint: Endpoint, old: int) -> bool:
    try:
        pid = AdminClient(endpoint, timeout=0.25).getpid()
    except GearctlError:
        return False
    return pid != old and is_serving(endpoint, 0.25)


def one_run(node: Node, jobs: int, interval: float) -> dict[str, float | int | None]:
    before = node.fresh_agent()
    queued_before = common.queued_total(node.gearman, timeout=5.0)
    old = before.gearmand_pid
    assert old is not None
    started = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    poll(lambda: new_gearmand_pid(node.gearman, old), interval=interval, timeout=60,
         what="gearmand serving again")  # fmt: skip
    serving = time.perf_counter() - started
    restored = None
    if jobs:
        poll(lambda: (m := node.serving_member()) and m.gearmand_pid != old, interval=0.01,
             timeout=300, what="member record serving")  # fmt: skip
        restored = time.perf_counter() - started
    queued_after = common.queued_total(node.gearman, timeout=10.0)
    return {"jobs": jobs, "serving_s": serving, "restored_s": restored,
            "queued_before": queued_before, "queued_after": queued_after}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 runs, 1,000 jobs")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs, second series")
    parser.add_argument("--interval", type=float, default=0.002, help="poll interval (s)")
    args = parser.parse_args()
    runs, queued_jobs = (3, 1000) if args.quick else (args.runs, args.jobs)

    results: list[dict[str, float | int | None]] = []
    with Services("kill") as services:
        node = Node(services.cluster(1))
        try:
            for jobs in (0, queued_jobs):
                if jobs:
                    common.submit(node.gearman, common.jobs(jobs))
                for run in range(runs):
                    result = one_run(node, jobs, args.interval)
                    results.append(result)
                    restored = result["restored_s"]
                    print(f"{jobs:>6} queued, run {run + 1}: serving after "
                          f"{result['serving_s']:.3f}s"
                          + (f", restored after {restored:.3f}s" if restored else "")
                          + f", queued {result['queued_after']}", flush=True)  # fmt: skip
        finally:
            node.close()

    summary = []
    for jobs in (0, queued_jobs):
        mine = [r for r in results if r["jobs"] == jobs]
        serving = [float(r["serving_s"] or 0) for r in mine]
        restored = [float(r["restored_s"]) for r in mine if r["restored_s"] is not None]
        summary.append({
            "jobs": jobs,
            "runs": len(mine),
            "serving_median_s": median(serving),
            "serving_max_s": max(serving),
            "restored_median_s": median(restored) if restored else None,
            "restored_max_s": max(restored) if restored else None,
            "all_jobs_back": all(r["queued_after"] == jobs for r in mine),
        })  # fmt: skip
    print()
    print(table(
        ["queued jobs", "runs", "serving median s", "serving max s", "restored median s",
         "restored max s", "all back", "goal < 0.5 s"],
        [[s["jobs"], s["runs"], s["serving_median_s"], s["serving_max_s"],
          s["restored_median_s"] if s["restored_median_s"] is not None else "-",
          s["restored_max_s"] if s["restored_max_s"] is not None else "-",
          s["all_jobs_back"], "met" if s["serving_max_s"] < 0.5 else "MISSED"]
         for s in summary],
    ))  # fmt: skip
    common.save(
        "kill_to_serving",
        {"quick": args.quick, "goal_s": 0.5, "interval_s": args.interval, "summary": summary,
         "runs": results},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
