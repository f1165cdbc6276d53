"""Throughput of cluster.client against one gearmand (builtin queue, 200003 buckets, -t 1).

1. Pipelined background submits: `Client.submit_background_many` vs a raw-socket pipelined
   submitter (same window, same jobs, same gearmand), alternating runs; prints jobs/s and the
   ratio (goal >= 0.8). Also Client with generated UUID4 uniques (unique=None).
2. Worker throughput: N queued no-op jobs drained by 1 and by 4 `Worker` processes.

    .venv/bin/python bench/client_throughput.py [--jobs 50000] [--rounds 2] [--worker-jobs 20000]

Starts and stops its own gearmand, by PID.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.admin import AdminClient, is_serving
from cluster.client import Client, Worker
from cluster.endpoint import Endpoint
from cluster.process import free_port, stop_pid, wait_until

HOST = "127.0.0.1"
PAYLOAD = b"x" * 64
WINDOW = 1000
HEADER = struct.Struct(">4sII")
SUBMIT_JOB_BG = 18
JOB_CREATED = 8


def start_gearmand(directory: Path) -> tuple[subprocess.Popen[bytes], Endpoint]:
    binary = shutil.which("gearmand")
    if binary is None:
        sys.exit("gearmand is not installed: apt-get install -y gearman-job-server")
    endpoint = Endpoint(HOST, free_port())
    argv = [
        binary, "--listen", HOST, "--port", str(endpoint.port), "--threads", "1",
        "--hashtable-buckets", "200003", "--log-file", str(directory / "gearmand.log"),
        "--verbose", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: is_serving(endpoint, 0.5),
        timeout=10,
        what="gearmand",
        alive=lambda: proc.poll() is None,
    )
    return proc, endpoint


def raw_submit(endpoint: Endpoint, function: str, uniques: list[str]) -> int:
    """Pipelined SUBMIT_JOB_BG on a bare socket: at most WINDOW unanswered, half-window sends."""
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    name = function.encode()
    pack = HEADER.pack
    half = WINDOW // 2
    sent = answered = 0
    buffer = b""
    total = len(uniques)
    try:
        while answered < total:
            while sent < total and sent - answered + half <= WINDOW:
                parts = []
                for unique in uniques[sent : sent + half]:
                    data = b"%s\0%s\0%s" % (name, unique.encode(), PAYLOAD)
                    parts.append(pack(b"\0REQ", SUBMIT_JOB_BG, len(data)))
                    parts.append(data)
                sock.sendall(b"".join(parts))
                sent += len(parts) // 2
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionError("gearmand closed the connection")
            buffer += chunk
            offset = 0
            while len(buffer) - offset >= 12:
                _, type_, size = HEADER.unpack_from(buffer, offset)
                if len(buffer) - offset < 12 + size:
                    break
                if type_ != JOB_CREATED:
                    raise RuntimeError(f"gearmand answered {type_}")
                offset += 12 + size
                answered += 1
            buffer = buffer[offset:]
    finally:
        sock.close()
    return answered


def protocol_submit(endpoint: Endpoint, function: str, uniques: list[str]) -> int:
    """GearmanConnection.submit_background_many alone: what Client builds on."""
    from cluster.protocol import GearmanConnection

    with GearmanConnection(endpoint) as conn:
        jobs = [(function, unique, PAYLOAD, "normal") for unique in uniques]
        return len(conn.submit_background_many(jobs, window=WINDOW))


def client_submit(endpoint: Endpoint, function: str, uniques: list[str] | None, n: int = 0) -> int:
    with Client(servers=[endpoint], chunk=10 * WINDOW) as client:
        if uniques is None:
            jobs = [(function, PAYLOAD)] * n
        else:
            jobs = [(function, PAYLOAD, unique) for unique in uniques]
        return len(client.submit_background_many(jobs, window=WINDOW))


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    count = fn(*args)
    return count / (time.perf_counter() - start)


def bench_submit(directory: Path, jobs: int, rounds: int) -> None:
    """Each round: a fresh gearmand (so queue depth does not favour the first run), then raw,
    GearmanConnection, Client and Client with generated uniques on it; order alternates."""
    runs = {"raw": raw_submit, "protocol": protocol_submit, "client": client_submit}
    rates: dict[str, list[float]] = {name: [] for name in [*runs, "auto"]}
    ratios = []
    for r in range(rounds):
        proc, endpoint = start_gearmand(directory)
        try:
            names = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in names:
                uniques = [str(uuid.uuid4()) for _ in range(jobs)]
                rates[name].append(timed(runs[name], endpoint, f"bench-{name}-{r}", uniques))
            rates["auto"].append(timed(client_submit, endpoint, f"bench-auto-{r}", None, jobs))
        finally:
            stop_pid(proc.pid)
            proc.wait()
        ratios.append(rates["client"][-1] / rates["raw"][-1])
    print(f"background submit: {jobs} jobs per run, {rounds} rounds (fresh gearmand each),")
    print(f"  64-byte payload, window {WINDOW}; jobs/s, median of rounds (all rounds)")
    labels = {
        "raw": "raw socket",
        "protocol": "GearmanConnection",
        "client": "Client (given uniques)",
        "auto": "Client (generated UUID4)",
    }
    for name, label in labels.items():
        print(f"  {label + ':':28}{median(rates[name]):>9,.0f}  ({_rates(rates[name])})")
    auto_ratios = [a / b for a, b in zip(rates["auto"], rates["raw"], strict=True)]
    print(
        f"  ratio Client/raw per round: {', '.join(f'{x:.2f}' for x in ratios)};"
        f" median {median(ratios):.2f} (generated uniques: {median(auto_ratios):.2f})"
    )


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


def _worker_main(endpoint: str, function: str, ready, go) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(servers=[endpoint])
    worker.register(function, lambda job: b"")
    ready.set()
    go.wait()
    worker.work()


def bench_workers(endpoint: Endpoint, jobs: int, processes: int) -> float:
    function = f"bench-worker-{processes}"
    with Client(servers=[endpoint]) as client:
        client.submit_background_many([(function, PAYLOAD)] * jobs)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    readies, procs = [], []
    for _ in range(processes):
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(str(endpoint), function, ready, go))
        proc.start()
        readies.append(ready)
        procs.append(proc)
    try:
        for ready in readies:
            ready.wait(10)
        admin = AdminClient(endpoint)
        start = time.perf_counter()
        go.set()
        while True:
            left = sum(f.queued for f in admin.status() if f.name == function)
            if left == 0:
                break
            time.sleep(0.005)
        rate = jobs / (time.perf_counter() - start)
    finally:
        for proc in procs:
            stop_pid(proc.pid, timeout=5)
            proc.join(5)
    print(f"  {processes} worker process(es): {rate:>9,.0f} jobs/s ({jobs} no-op jobs)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker-jobs", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gearctl-bench-") as tmp:
        bench_submit(Path(tmp), args.jobs, args.rounds)
        proc, endpoint = start_gearmand(Path(tmp))
        try:
            print("worker throughput (one gearmand)")
            bench_workers(endpoint, args.worker_jobs, 1)
            bench_workers(endpoint, args.worker_jobs, 4)
        finally:
            stop_pid(proc.pid)
            proc.wait()


if __name__ == "__main__":
    main()
