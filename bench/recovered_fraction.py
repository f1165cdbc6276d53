"""Recovered fraction after `kill -9`: plain gearmand's own replay vs gearctl's restore (issue 3).

Per size, two memcached stores receive the same content the same way: a plain gearmand (default
key prefix `gear_`, the agent's other flags) on each takes the same pipelined background submits,
is killed with SIGKILL, and then 10% of the keys are read twice (as clients or tools do; it moves
items between memcached's LRU segments, which is what makes gearmand's replay miss them).

- plain gearmand: a fresh gearmand with the same prefix starts on store A; once its admin `status`
  stops changing, the sum of its queue column is what it recovered;
- gearctl: on store B, a fresh gearmand with a new prefix (loads nothing) and
  `cluster.restore.restore` of every `gear_` key; the same queue sum is what gearctl recovered.

The `img-resize` jobs are counted per function name as each server reports them.

    .venv/bin/python bench/recovered_fraction.py [--quick] [--full] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import sys
import time

import common
from common import FUNCTIONS, Services, poll, table

from cluster.endpoint import Endpoint
from cluster.restore import restore
from cluster.store import Store

SETTLE = 1.0  # seconds the queue must stay unchanged before a replay counts as done


def fill(services: Services, batch: list[common.Job], memory_mb: int) -> Endpoint:
    """A store holding `batch` as a killed plain gearmand leaves it, 10% of keys read twice."""
    store = services.memcached(memory_mb)
    gearman, proc = services.gearmand(store, None)
    common.submit(gearman, batch)
    services.kill9(proc)
    client = Store(store, timeout=30.0)
    read = [f"gear_{function}-{unique}" for function, unique, _, _ in batch[::10]]
    for _ in range(2):
        found = client.get_many(read)
        if len(found) != len(read):
            raise SystemExit(f"store {store}: {len(found)} of {len(read)} keys found")
    client.close()
    return store


def settled_queue(endpoint: Endpoint) -> dict[str, int]:
    """The per-function queue once it has not changed for SETTLE seconds (replay over)."""
    last: dict[str, int] | None = None
    since = time.monotonic()
    while True:
        now = common.queued(endpoint, timeout=30.0)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE:
            return now
        time.sleep(0.1)


def one_size(count: int) -> dict[str, object]:
    batch = common.jobs(count)
    memory_mb = max(256, count // 2500 * 4)  # ~400 bytes/job of room; -M refuses, never evicts
    with Services("recovered") as services:
        plain_store = fill(services, batch, memory_mb)
        gearctl_store = fill(services, batch, memory_mb)

        started = time.perf_counter()
        plain, _ = services.gearmand(plain_store, None)
        plain_queue = settled_queue(plain)
        plain_seconds = time.perf_counter() - started - SETTLE

        store = Store(gearctl_store, timeout=30.0)
        expected = store.curr_items()
        started = time.perf_counter()
        target, _ = services.gearmand(gearctl_store, "g1_")
        gearmand_start = time.perf_counter() - started  # its replay scan of the store
        report = restore(store, target, expected=expected, keep_prefix="g1_",
                         known_functions=set(FUNCTIONS), read_timeout=30.0)  # fmt: skip
        gearctl_seconds = time.perf_counter() - started
        gearctl_queue = poll(lambda: common.queued(target, timeout=30.0), interval=0.1,
                             timeout=10, what="gearctl status")  # fmt: skip
        store.close()
    img_resize = sum(1 for job in batch if job[0] == "img-resize")
    plain_total, gearctl_total = sum(plain_queue.values()), sum(gearctl_queue.values())
    return {
        "jobs": count,
        "stored": expected,
        "plain_recovered": plain_total,
        "plain_fraction": plain_total / count,
        "plain_seconds": plain_seconds,
        "plain_queue": plain_queue,
        "gearctl_recovered": gearctl_total,
        "gearctl_fraction": gearctl_total / count,
        "gearctl_seconds": gearctl_seconds,
        "gearctl_gearmand_start_s": gearmand_start,
        "gearctl_queue": gearctl_queue,
        "gearctl_deferred_keys": getattr(report, "deferred", 0),
        "img_resize_submitted": img_resize,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 jobs")
    parser.add_argument("--full", action="store_true", help="add 1,000,000 jobs (minutes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    args = parser.parse_args()
    sizes = [1000] if args.quick else args.sizes + ([1_000_000] if args.full else [])

    results = []
    for count in sizes:
        result = one_size(count)
        results.append(result)
        print(f"{count:>9} jobs: plain gearmand {result['plain_fraction']:.1%} "
              f"({result['plain_queue']}), gearctl {result['gearctl_fraction']:.1%} "
              f"({result['gearctl_queue']})", flush=True)  # fmt: skip
    print()
    print(table(
        ["jobs", "plain recovered", "plain %", "plain img-resize/img", "gearctl recovered",
         "gearctl %", "gearctl img-resize/img", "gearmand start s", "gearctl s",
         "goal 100%"],
        [[r["jobs"], r["plain_recovered"], f"{r['plain_fraction']:.1%}",
          f"{r['plain_queue'].get('img-resize', 0)}/{r['plain_queue'].get('img', 0)}",
          r["gearctl_recovered"], f"{r['gearctl_fraction']:.1%}",
          f"{r['gearctl_queue'].get('img-resize', 0)}/{r['gearctl_queue'].get('img', 0)}",
          r["gearctl_gearmand_start_s"], r["gearctl_seconds"],
          "met" if r["gearctl_recovered"] == r["jobs"] else "MISSED"]
         for r in results],
    ))  # fmt: skip
    print(
        "(img-resize/img: jobs each server queued under function `img-resize` / `img`; "
        f"{results[0]['img_resize_submitted']:,} of the first size were `img-resize`)"
    )
    common.save("recovered_fraction", {"quick": args.quick, "full": args.full,
                                       "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
