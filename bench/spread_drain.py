"""The drain part of a take-over: one survivor takes a dead node's whole store, or every survivor
takes its part in parallel (issue 18, cluster/spread.py), side by side in one run.

Each repeat fills a fresh store (the dead node's) with N jobs and drains it both ways, in turn:
- one survivor: `restore` of the whole store into its gearmand (its own store), as today;
- spread over S survivors: the claimer lists the store once (the plan's counts per part, as it
  would while the store is quiescent), then S processes (survivors are separate agents, so no
  shared GIL) each `restore` their `PartStore` into their own gearmand (each on its own store).
  The drain time is the plan's listing plus the slowest part.
- the same spread with the parts drained one after the other, each timed alone: what every
  survivor would take on a host of its own (plan + the slowest part alone).
Every job is checked queued exactly once (admin `status` totals per target equal the plan's
counts, the dead store is empty). Only the drain is timed: the take-over's detection (session
expiry) and fencing are the same either way.

    .venv/bin/python bench/spread_drain.py [--quick] [--jobs 100000] [--survivors 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import common
from common import Services, median, table

from cluster.endpoint import Endpoint
from cluster.restore import restore
from cluster.spread import PartStore, part_counts
from cluster.store import Store


def drain_part(store: str, index: int, parts: int, target: str) -> None:
    """Worker process (a survivor's agent, already running): says `ready`, reads its part's
    expected count from stdin, restores the part (parts = 0: the whole store), prints the result."""
    endpoint = Endpoint.parse(store)
    source = PartStore(endpoint, index, parts, timeout=30) if parts else Store(endpoint, timeout=30)
    print("ready", flush=True)
    expected = int(sys.stdin.readline())
    started = time.perf_counter()
    report = restore(source, Endpoint.parse(target), expected=expected, keep_prefix=None,
                     known_functions=common.FUNCTIONS, read_timeout=60)  # fmt: skip
    seconds = time.perf_counter() - started
    print(json.dumps({"moved": report.moved, "seconds": seconds}), flush=True)


class Survivors:
    """One worker process per part, started and ready (imports done) before the clock starts."""

    def __init__(self, store: Endpoint, parts: int, targets: list[Endpoint]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for index, target in enumerate(targets):
            argv = [sys.executable, __file__, "--part", str(store), str(index), str(parts),
                    str(target)]  # fmt: skip
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"

    def drain(self, expected: list[int]) -> list[dict[str, float]]:
        """All parts at once."""
        for proc, count in zip(self.procs, expected, strict=True):
            self._go(proc, count)
        results = [self._result(proc) for proc in self.procs]
        for proc in self.procs:
            proc.communicate(timeout=60)
        return results

    def one_by_one(self, expected: list[int]) -> list[dict[str, float]]:
        """Each part alone, the next one after the last finished."""
        results = []
        for proc, count in zip(self.procs, expected, strict=True):
            self._go(proc, count)
            results.append(self._result(proc))
            proc.communicate(timeout=60)
        return results

    @staticmethod
    def _go(proc: subprocess.Popen[str], expected: int) -> None:
        assert proc.stdin is not None
        proc.stdin.write(f"{expected}\n")
        proc.stdin.flush()

    @staticmethod
    def _result(proc: subprocess.Popen[str]) -> dict[str, float]:
        """The result line (not the process's exit: its teardown is no part of the drain)."""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"drain worker failed ({proc.wait()})")
        return json.loads(line)


def one_survivor(services: Services, jobs: int) -> dict[str, object]:
    dead = services.memcached()
    common.fill_store(dead, jobs)
    target, _ = services.gearmand(services.memcached(), "g1_")
    survivor = Survivors(dead, 0, [target])
    started = time.perf_counter()
    survivor.drain([jobs])
    seconds = time.perf_counter() - started
    assert common.queued_total(target, 30) == jobs
    return {"seconds": seconds, "per_survivor": [jobs]}


def spread(services: Services, jobs: int, survivors: int, *, parallel: bool) -> dict[str, object]:
    """Parallel: every survivor drains its part at once (this machine's cores shared by all).
    Not parallel: the parts one after the other, each timed alone: what each survivor would take
    on a host of its own (the dead store's memcached still serves all of them)."""
    dead = services.memcached()
    common.fill_store(dead, jobs)
    targets = [services.gearmand(services.memcached(), "g1_")[0] for _ in range(survivors)]
    workers = Survivors(dead, survivors, targets)
    whole = Store(dead, timeout=30)
    try:
        started = time.perf_counter()
        counts = part_counts((i.key for i in whole.snapshot(expected=jobs)), survivors)
        plan_s = time.perf_counter() - started
        if parallel:
            parts = workers.drain(counts)
            seconds = time.perf_counter() - started
        else:
            parts = workers.one_by_one(counts)
            seconds = plan_s + max(p["seconds"] for p in parts)
        assert whole.curr_items() == 0, "jobs left in the dead store"
    finally:
        whole.close()
    queued = [common.queued_total(t, 30) for t in targets]
    assert queued == counts, (queued, counts)
    return {"seconds": seconds, "plan_s": plan_s, "per_survivor": counts,
            "parts_s": [round(p["seconds"], 3) for p in parts]}  # fmt: skip


def main() -> int:
    if sys.argv[1:2] == ["--part"]:
        store, index, parts, target = sys.argv[2:6]
        drain_part(store, int(index), int(parts), target)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 jobs, 1 repeat")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--survivors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jobs, repeats = (5000, 1) if args.quick else (args.jobs, args.repeats)

    runs: list[dict[str, object]] = []
    with Services("spread") as services:
        for repeat in range(repeats):  # interleaved: each repeat drains all three ways
            one = one_survivor(services, jobs)
            parallel = spread(services, jobs, args.survivors, parallel=True)
            alone = spread(services, jobs, args.survivors, parallel=False)
            counts = parallel["per_survivor"]
            runs.append({
                "repeat": repeat, "one": one, "spread": parallel, "parts_alone": alone,
                "ratio": float(parallel["seconds"]) / float(one["seconds"]),  # type: ignore[arg-type]
                "ratio_own_hosts": float(alone["seconds"]) / float(one["seconds"]),  # type: ignore[arg-type]
                "most_loaded_over_even": max(counts) / (jobs / args.survivors) - 1,  # type: ignore[call-overload]
            })  # fmt: skip
            print(f"repeat {repeat + 1}: one survivor {one['seconds']:.2f}s; "
                  f"{args.survivors} survivors at once {parallel['seconds']:.2f}s "
                  f"(plan {parallel['plan_s']:.2f}s, parts {parallel['parts_s']}); "
                  f"parts alone {alone['parts_s']} (plan {alone['plan_s']:.2f}s); "
                  f"per survivor {counts}", flush=True)  # fmt: skip

    def med(way: str) -> float:
        return median([float(r[way]["seconds"]) for r in runs])  # type: ignore[index]

    ratios = [float(r["ratio"]) for r in runs]  # type: ignore[arg-type]
    own = [float(r["ratio_own_hosts"]) for r in runs]  # type: ignore[arg-type]
    print()
    print(table(
        ["jobs", "survivors", "repeats", "one survivor s", "spread, this machine s",
         "ratio (range)", "spread, parts alone s", "ratio (range)", "most loaded vs even"],
        [[jobs, args.survivors, repeats, med("one"), med("spread"),
          f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})", med("parts_alone"),
          f"{median(own):.2f} ({min(own):.2f}-{max(own):.2f})",
          f"+{max(float(r['most_loaded_over_even']) for r in runs):.2%}"]],  # type: ignore[arg-type]
    ))  # fmt: skip
    common.save("spread_drain", {"quick": args.quick, "jobs": jobs, "survivors": args.survivors,
                                 "runs": runs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
