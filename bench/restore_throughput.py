"""Restore throughput as a ratio to the same gearmand's pipelined submit throughput (issue 3).

Per size and repeat, on one fresh memcached store (`-M`):
1. a fresh gearmand (the agent's flags, `-q libmemcached`, prefix `g1_`) takes N pipelined
   background submits: the ceiling, since gearmand persists every job to memcached before
   JOB_CREATED;
2. that gearmand is killed with SIGKILL; a fresh one starts on the same store with prefix `g2_`
   (it loads nothing by itself);
3. `cluster.restore.restore` moves the N jobs stored under `g1_` into it (metadump passes,
   multi-get, pipelined re-submits, deletes), and the queue is checked to hold all N.

Phases are wall time summed per call. The restore is pipelined: reads (`mg`) and deletes (`md`)
run on its helper thread while chunks are re-submitted, so the phases overlap and add up to more
than the restore's wall time; "wait for helper" is the time the submitting thread waited for the
helper (the part of the store I/O that was not hidden behind gearmand's work).

    .venv/bin/python bench/restore_throughput.py [--quick] [--sizes 10000 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import Counter
from concurrent.futures import Future

import common
from common import FUNCTIONS, Services, median, table

from cluster.gearman.protocol import GearmanConnection
from cluster.restore import restore
from cluster.store import Store

PHASES: Counter[str] = Counter()  # seconds spent per phase of the restore


def _timed(cls: type, method: str, phase: str) -> None:
    """Wrap cls.method to add its wall time to PHASES[phase] (this process only)."""
    original = getattr(cls, method)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[phase] += time.perf_counter() - started

    setattr(cls, method, wrapper)


_timed(Store, "snapshot", "list (metadump)")
_timed(Store, "get_many", "read (mg, helper)")
_timed(GearmanConnection, "submit_background_many", "re-submit")
_timed(Store, "delete_many", "delete (md, helper)")
_timed(Future, "result", "wait for helper")


def one_run(count: int) -> dict[str, float | int]:
    with Services("restore") as services:
        store_endpoint = services.memcached()
        first, first_proc = services.gearmand(store_endpoint, "g1_")
        submit_seconds = common.submit(first, common.jobs(count))
        services.kill9(first_proc)
        store = Store(store_endpoint, timeout=10.0)
        stored = store.curr_items()
        second, _ = services.gearmand(store_endpoint, "g2_")
        PHASES.clear()
        report = restore(
            store,
            second,
            expected=stored,
            keep_prefix="g2_",
            known_functions=set(FUNCTIONS),
            read_timeout=30.0,
        )
        queued = common.queued_total(second, timeout=10.0)
        left = sum(1 for item in store.items() if item.key.startswith("g1_"))
        store.close()
    return {
        "jobs": count,
        "stored": stored,
        "submit_seconds": submit_seconds,
        "submit_rate": count / submit_seconds,
        "restore_seconds": report.seconds,
        "restore_rate": report.moved / report.seconds,
        "moved": report.moved,
        "queued_after": queued or 0,
        "old_keys_left": left,
        "deferred_keys": getattr(report, "deferred", 0),
        "ratio": (report.moved / report.seconds) / (count / submit_seconds),
        "phases_s": dict(PHASES),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 jobs, once")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes, repeats = ([2000], 1) if args.quick else (args.sizes, args.repeats)

    runs = []
    for count in sizes:
        for repeat in range(repeats):
            run = one_run(count)
            runs.append(run)
            print(f"{count:>7} jobs #{repeat + 1}: submit {run['submit_rate']:,.0f}/s, "
                  f"restore {run['restore_rate']:,.0f}/s, ratio {run['ratio']:.2f}, "
                  f"queued {run['queued_after']:,}; phases "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in run["phases_s"].items()),
                  flush=True)  # fmt: skip
    summary = []
    for count in sizes:
        mine = [r for r in runs if r["jobs"] == count]
        summary.append({
            "jobs": count,
            "runs": len(mine),
            "submit_rate_median": median([r["submit_rate"] for r in mine]),
            "restore_rate_median": median([r["restore_rate"] for r in mine]),
            "ratio_median": median([r["ratio"] for r in mine]),
            "ratio_min": min(r["ratio"] for r in mine),
            "all_restored": all(r["queued_after"] == count and r["old_keys_left"] == 0
                                for r in mine),
        })  # fmt: skip
    print()
    print(table(
        ["jobs", "runs", "submit jobs/s", "restore jobs/s", "ratio (median)", "ratio (min)",
         "all back", "goal >= 0.8"],
        [[s["jobs"], s["runs"], s["submit_rate_median"], s["restore_rate_median"],
          f"{s['ratio_median']:.2f}", f"{s['ratio_min']:.2f}", s["all_restored"],
          "met" if s["ratio_median"] >= 0.8 else "MISSED"] for s in summary],
    ))  # fmt: skip
    common.save("restore_throughput", {"quick": args.quick, "goal_ratio": 0.8,
                                       "summary": summary, "runs": runs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
