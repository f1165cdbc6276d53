"""The node agent's resident memory and idle CPU in a running local cluster (issue 3).

Starts a local cluster (`gearctl cluster up`), lets it settle, then for every agent process reads
its resident set (psutil RSS, and USS: the memory only it uses) and its CPU time over a window
(user + system seconds / window seconds = % of one core). The agents are idle but doing their
normal work: health checks of gearmand every 0.2 s, ZooKeeper heartbeats, take-over scans.

    .venv/bin/python bench/agent_footprint.py [--quick] [--nodes 3] [--window 30] [--baseline DIR]

`--baseline DIR` measures a second local cluster at the same time, its agents running the code in
DIR (a source tree of another commit, e.g. `git archive main | tar -x -C DIR`; it runs with this
venv's Python), so a change is compared side by side in one window, under the same load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common
import psutil
from common import Services, table

from cluster.local import cluster as localcluster
from cluster.process import free_port_block

GOAL_RSS_MB = 40.0
GOAL_CPU_PERCENT = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s window")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0, help="CPU window in seconds")
    parser.add_argument("--baseline", type=Path, help="source tree of the code to compare with")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()
    window, settle = (5.0, 2.0) if args.quick else (args.window, args.settle)

    with Services("footprint") as services:
        cluster = services.cluster(args.nodes)
        # The agents themselves, not their watchdog supervisors (whose PIDs `processes` holds).
        agents = {("this tree", n.name): agent_of(cluster.processes[f"agent:{n.name}"].pid)
                  for n in cluster.nodes}  # fmt: skip
        baseline = None
        if args.baseline:
            baseline = services.dir / "baseline"
            agents.update(start_baseline(args.baseline, baseline, args.nodes))
        try:
            time.sleep(settle)
            before = {key: sum(proc.cpu_times()[:2]) for key, proc in agents.items()}
            started = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - started
            rows = []
            for (tree, name), proc in agents.items():
                cpu = (sum(proc.cpu_times()[:2]) - before[tree, name]) / elapsed * 100
                memory = proc.memory_full_info()
                rows.append({
                    "tree": tree,
                    "node": name,
                    "pid": proc.pid,
                    "rss_mb": memory.rss / 2**20,
                    "uss_mb": memory.uss / 2**20,
                    "threads": proc.num_threads(),
                    "cpu_percent": cpu,
                })  # fmt: skip
        finally:
            if baseline is not None:
                gearctl(args.baseline, "cluster", "down", "--dir", str(baseline))
    print(table(
        ["code", "node", "agent pid", "RSS MB", "USS MB", "threads", "CPU % of a core", "goals"],
        [[r["tree"], r["node"], r["pid"], r["rss_mb"], r["uss_mb"], r["threads"], r["cpu_percent"],
          "met" if r["rss_mb"] < GOAL_RSS_MB and r["cpu_percent"] < GOAL_CPU_PERCENT
          else "MISSED"] for r in rows],
    ))  # fmt: skip
    common.save("agent_footprint", {
        "quick": args.quick, "window_s": window, "goal_rss_mb": GOAL_RSS_MB,
        "goal_cpu_percent": GOAL_CPU_PERCENT, "agents": rows,
        "baseline": str(args.baseline) if args.baseline else None,
        "max_rss_mb": max(r["rss_mb"] for r in rows if r["tree"] == "this tree"),
        "max_cpu_percent": max(r["cpu_percent"] for r in rows if r["tree"] == "this tree"),
    })  # fmt: skip
    return 0


def gearctl(tree: Path, *argv: str) -> None:
    """Run `gearctl` from the source tree `tree` (python -m puts it first on sys.path)."""
    subprocess.run([sys.executable, "-m", "cluster", *argv], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def start_baseline(
    tree: Path, directory: Path, nodes: int
) -> dict[tuple[str, str], psutil.Process]:
    base = free_port_block(localcluster.PORT_BLOCK)
    gearctl(tree, "cluster", "up", "--dir", str(directory), "--nodes", str(nodes),
            "--port-base", str(base))  # fmt: skip
    processes = json.loads((directory / "cluster.json").read_text())["processes"]
    return {("baseline", key.split(":", 1)[1]): agent_of(ref["pid"])
            for key, ref in processes.items() if key.startswith("agent:")}  # fmt: skip


def agent_of(pid: int) -> psutil.Process:
    """The agent: the one child of its watchdog supervisor `pid`, or `pid` itself in a tree
    from before agents ran under a supervisor."""
    process = psutil.Process(pid)
    children = process.children()
    return children[0] if children else process


if __name__ == "__main__":
    sys.exit(main())
