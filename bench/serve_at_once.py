"""Ways a restarted gearmand can serve at once whatever its store holds (issue 18), side by side.

gearmand 1.1.20's libmemcached queue replays at start-up with `memcached_dump`: `stats items`, then
`stats cachedump <class> 0` for every slab class, and for *every* key listed one `mget` round trip;
only then is the key's prefix compared with its own (libgearman-server/plugins/queue/libmemcached/
queue.cc, `callback_for_key` / `callback_loader`). A fresh prefix therefore loads nothing but still
costs one round trip per listed key before gearmand answers. Each way below starts gearmand (new
prefix) `--runs` times per store size and times spawn -> admin `status` answers (polled every 2 ms):

- one-store: today: gearmand on the store that holds the N jobs of the previous incarnation;
- twin-stores: two memcached instances per node used in turn: gearmand on the empty twin while
  the N jobs sit in the other (the restore reads them from there);
- no-dump: one store with memcached `-X` (cachedump and metadump disabled): gearmand's walk
  fails at once, but the restore cannot list the store either (checked: metadump refused);
- fresh-store: a new memcached per incarnation: its own start is added to gearmand's.

Also measured: the memcached RSS each way costs (empty, holding N, after the N were deleted), and
at sizes up to `--restore-max` the twin-stores restore (from the full twin into the gearmand on the
empty one, `cluster.restore.restore`) against a pipelined submit of the same N jobs in the same
run (`--restore-repeats` pairs, their median). Stores are filled directly with gearmand's key
format (`ms`, pipelined): it is what a killed gearmand leaves, and 1M jobs through gearmand would
take a minute per store.

    .venv/bin/python bench/serve_at_once.py [--quick] [--sizes 0,10000,100000,1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import common
from common import HOST, Services, median, table

from cluster.endpoint import Endpoint
from cluster.gearman.admin import is_serving
from cluster.gearmand_server import (
    DEFAULT_EXPECTED_QUEUE_DEPTH,
    GearmandLaunch,
    hashtable_buckets,
    io_threads,
)
from cluster.local.memcached_server import memcached_answers, memcached_argv
from cluster.process import free_port, require_binary, spawn, wait_until
from cluster.restore import restore
from cluster.store import Store

WAYS = ("one-store", "twin-stores", "no-dump", "fresh-store")
MEMORY_MB = 1024


def start_store(services: Services, *extra: str) -> tuple[Endpoint, subprocess.Popen[bytes]]:
    endpoint = Endpoint(HOST, free_port())
    log = services.dir / f"memcached-{endpoint.port}.log"
    argv = memcached_argv(require_binary("memcached", "memcached"), endpoint, MEMORY_MB)
    proc = spawn([*argv, *extra], log_path=log)
    services.procs.append(proc)
    wait_until(lambda: memcached_answers(endpoint, 0.2), timeout=10, what=f"memcached {endpoint}",
               alive=lambda: proc.poll() is None, log_path=log)  # fmt: skip
    return endpoint, proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_to_serving(services: Services, store: Endpoint, prefix: str) -> float:
    """Spawn gearmand on `store` with `prefix`; seconds until admin `status` answers; kill it."""
    endpoint = Endpoint(HOST, free_port())
    launch = GearmandLaunch(
        endpoint=endpoint, store=store, prefix=prefix,
        log_path=services.dir / f"gearmand-{endpoint.port}.log",
        pid_path=services.dir / f"gearmand-{endpoint.port}.pid",
        threads=io_threads(), buckets=hashtable_buckets(DEFAULT_EXPECTED_QUEUE_DEPTH),
    )  # fmt: skip
    started = time.perf_counter()
    proc = spawn(launch.argv(require_binary("gearmand", "gearman-job-server")),
                 log_path=services.dir / f"gearmand-{endpoint.port}.stdout.log")  # fmt: skip
    try:
        while not is_serving(endpoint, 0.25):
            if proc.poll() is not None:
                raise RuntimeError(f"gearmand exited: see {launch.log_path}")
            time.sleep(0.002)
        return time.perf_counter() - started
    finally:
        services.kill9(proc)


def metadump_refused(store: Endpoint) -> bool:
    with socket.create_connection((store.host, store.port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        reply = sock.recv(4096)
    return not reply.startswith(b"key=") and reply != b"END\r\n"


def restore_vs_submit(services: Services, count: int, payload: int) -> dict[str, float]:
    """Twin stores: restore N from the full twin into the gearmand on the empty one, against a
    pipelined submit of the same N into a fresh gearmand on its own store, in the same run."""
    ceiling = services.submit_ceiling(count, payload)
    full, _ = start_store(services)
    common.fill_store(full, count, payload)
    empty, _ = start_store(services)
    target, _proc = services.gearmand(empty, "g2_")
    source = Store(full, timeout=30)
    try:
        report = restore(source, target, expected=count, keep_prefix=None,
                         known_functions=common.FUNCTIONS, read_timeout=60)  # fmt: skip
    finally:
        source.close()
    assert report.moved == count, report
    queued = common.queued_total(target, timeout=10)
    assert queued == count, queued
    rate = count / report.seconds
    return {"submit_per_s": ceiling, "restore_per_s": rate, "ratio": rate / ceiling}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 0 and 1,000 jobs, 2 runs")
    parser.add_argument("--sizes", default="0,10000,100000,1000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--payload",
        type=int,
        default=common.PAYLOAD_BYTES,
        help="payload bytes of the filled jobs (smaller keeps 1M runs short)",
    )
    parser.add_argument(
        "--restore-max",
        type=int,
        default=100_000,
        help="largest size whose restore rate is measured (each takes N/15k s)",
    )
    parser.add_argument(
        "--restore-repeats",
        type=int,
        default=3,
        help="submit/restore pairs per size (the ratio is their median)",
    )
    args = parser.parse_args()  # fmt: skip
    sizes = [0, 1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    runs = 2 if args.quick else args.runs

    rows: list[dict[str, object]] = []
    with Services("serve-at-once") as services:
        for size in sizes:
            row: dict[str, object] = {"jobs": size}
            # one-store and no-dump: the N jobs sit in the store gearmand starts on.
            full, full_proc = start_store(services)
            nodump, nodump_proc = start_store(services, "-X")
            empty, empty_proc = start_store(services)
            row["rss_empty_mb"] = rss_mb(empty_proc.pid)
            common.fill_store(full, size, args.payload)
            common.fill_store(nodump, size, args.payload)
            row["rss_full_mb"] = rss_mb(full_proc.pid)
            row["metadump_refused_with_X"] = metadump_refused(nodump)
            starts: dict[str, list[float]] = {way: [] for way in WAYS}
            for run in range(runs):  # interleaved: each run starts every way once
                prefix = f"g{run + 2}_"
                starts["one-store"].append(time_to_serving(services, full, prefix))
                starts["twin-stores"].append(time_to_serving(services, empty, prefix))
                starts["no-dump"].append(time_to_serving(services, nodump, prefix))
                began = time.perf_counter()
                fresh, fresh_proc = start_store(services)
                memcached_s = time.perf_counter() - began
                starts["fresh-store"].append(memcached_s + time_to_serving(services, fresh, prefix))
                services.kill9(fresh_proc)
            for way, seconds in starts.items():
                row[f"{way}_median_s"] = median(seconds)
                row[f"{way}_max_s"] = max(seconds)
                row[f"{way}_s"] = seconds
            store = Store(full, timeout=60)  # what memcached keeps once the N are drained
            try:
                store.delete_many(item.key for item in store.items())
            finally:
                store.close()
            row["rss_after_delete_mb"] = rss_mb(full_proc.pid)
            for proc in (full_proc, nodump_proc, empty_proc):
                services.kill9(proc)
            if 0 < size <= args.restore_max:
                pairs = [restore_vs_submit(services, size, args.payload)
                         for _ in range(args.restore_repeats)]  # fmt: skip
                row["restore_pairs"] = pairs
                row["ratio"] = median([pair["ratio"] for pair in pairs])
            rows.append(row)
            print(f"{size:>9,} jobs: " + ", ".join(
                f"{way} {row[f'{way}_median_s']:.3f}s" for way in WAYS), flush=True)  # fmt: skip

    print()
    print(table(
        ["jobs", *(f"{w} median s" for w in WAYS), "max of twin s", "restore/submit median"],
        [[r["jobs"], *(r[f"{w}_median_s"] for w in WAYS), r["twin-stores_max_s"],
          r.get("ratio", "-")] for r in rows],
    ))  # fmt: skip
    print()
    print(table(
        ["jobs", "memcached RSS empty MB", "holding the jobs MB", "after deleting them MB",
         "metadump refused with -X"],
        [[r["jobs"], r["rss_empty_mb"], r["rss_full_mb"], r["rss_after_delete_mb"],
          r["metadump_refused_with_X"]] for r in rows],
    ))  # fmt: skip
    common.save("serve_at_once", {"quick": args.quick, "runs": runs, "payload": args.payload,
                                  "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
