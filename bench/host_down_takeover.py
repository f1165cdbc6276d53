"""Take-over time after a host death, on network-namespace hosts (issue 13).

Runs the `host-down` drill (cluster.drill.scenarios) several times: node1's host loses every
process and its link at once, so its address times out; the time is from that moment to the
start of a survivor's take-over of node1's store (its take-over record's `started`). Goal: about
the session timeout + 2 s. Needs root (network namespaces).

    .venv/bin/python bench/host_down_takeover.py [--runs 5] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

from common import RESULTS

from cluster.drill.scenarios import run
from cluster.local.cluster import DEFAULT_SESSION_TIMEOUT

PATTERN = re.compile(r"started ([0-9.]+)s after the host died")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    seconds = []
    for n in range(args.runs):
        result = run("host-down", args.jobs, lambda _text: None)
        found = [m for _, event in result.timeline if (m := PATTERN.search(event))]
        if not result.passed or not found:
            print(f"run {n + 1}: drill failed: {result.ledger} {result.violations}")
            return 1
        seconds.append(float(found[0].group(1)))
        print(f"run {n + 1}: take-over started {seconds[-1]:.2f}s after the host died")
    report = {
        "session_timeout": DEFAULT_SESSION_TIMEOUT,
        "goal_seconds": DEFAULT_SESSION_TIMEOUT + 2,
        "runs": seconds,
        "median": statistics.median(seconds),
    }
    (RESULTS / "host_down_takeover.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"median {report['median']:.2f}s over {len(seconds)} runs (goal about "
          f"{report['goal_seconds']:g}s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
