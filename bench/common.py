"""Shared helpers of the bench scripts: start and stop real services, submit jobs, print, save.

Every process a bench starts is registered in a `Services` and stopped by PID when the bench ends,
also on failure. Numbers go to `bench/results/<name>.json` (git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.endpoint import Endpoint  # noqa: E402
from cluster.errors import GearctlError  # noqa: E402
from cluster.gearman.admin import AdminClient, is_serving  # noqa: E402
from cluster.gearman.protocol import GearmanConnection, Priority  # noqa: E402
from cluster.gearmand_server import (  # noqa: E402
    DEFAULT_EXPECTED_QUEUE_DEPTH,
    GearmandLaunch,
    hashtable_buckets,
    io_threads,
)
from cluster.local import cluster as localcluster  # noqa: E402
from cluster.local.memcached_server import start_memcached  # noqa: E402
from cluster.process import (  # noqa: E402
    free_port,
    free_port_block,
    kill_pid,
    require_binary,
    spawn,
    stop_pid,
    wait_until,
)

RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
PAYLOAD_BYTES = 64
FUNCTIONS = ("img-resize", "mail", "search-index-v2", "report")
PRIORITIES = ("high", "normal", "low")

Job = tuple[str, str, bytes, str]  # function, unique, payload, priority


def jobs(count: int, tag: str = "job", payload_bytes: int = PAYLOAD_BYTES) -> list[Job]:
    """`count` background jobs: `payload_bytes` payloads, dashed functions, all three priorities."""
    return [
        (
            FUNCTIONS[n % len(FUNCTIONS)],
            f"{tag}-{n}",
            f"{n:08d}".encode().ljust(payload_bytes, b"."),
            PRIORITIES[(n // len(FUNCTIONS)) % len(PRIORITIES)],
        )
        for n in range(count)
    ]


def submit(endpoint: Endpoint, batch: Sequence[Job]) -> float:
    """Submit pipelined on one connection; return the seconds until the last JOB_CREATED."""
    started = time.perf_counter()
    with GearmanConnection(endpoint, read_timeout=30.0) as conn:
        handles = conn.submit_background_many(batch)
    seconds = time.perf_counter() - started
    if len(handles) != len(batch):
        raise GearctlError(f"{len(handles)} of {len(batch)} submits acknowledged")
    return seconds


def fill_store(store: Endpoint, count: int, payload_bytes: int = PAYLOAD_BYTES) -> None:
    """`count` jobs of `jobs()`'s mix as a killed gearmand (prefix g1_) leaves them in its store:
    keys g1_<function>-job-<n>, flags = priority; pipelined `ms` (far faster than via gearmand)."""
    flags = [Priority(p).flags for p in PRIORITIES]
    with socket.create_connection((store.host, store.port), timeout=60) as sock:
        for start in range(0, count, 5000):
            parts = []
            for n in range(start, min(count, start + 5000)):
                function = FUNCTIONS[n % len(FUNCTIONS)]
                payload = f"{n:08d}".encode().ljust(payload_bytes, b".")
                flag = flags[(n // len(FUNCTIONS)) % len(flags)]
                parts.append(b"ms g1_%s-job-%d %d F%d q\r\n%s\r\n"
                             % (function.encode(), n, len(payload), flag, payload))  # fmt: skip
            sock.sendall(b"".join(parts) + b"mn\r\n")
            reply = b""
            while not reply.endswith(b"MN\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("memcached closed the connection while filling")
                reply += chunk
            if reply != b"MN\r\n":
                raise RuntimeError(f"memcached refused a write: {reply[:200]!r}")


def queued(endpoint: Endpoint, timeout: float = 2.0) -> dict[str, int]:
    """gearmand's admin `status` queue column, per function."""
    return {f.name: f.queued for f in AdminClient(endpoint, timeout=timeout).status()}


def queued_total(endpoint: Endpoint, timeout: float = 2.0) -> int | None:
    """Sum of the queue column, or None when gearmand does not answer."""
    try:
        return sum(queued(endpoint, timeout).values())
    except GearctlError:
        return None


class Services:
    """Processes started by one bench, stopped by PID (SIGTERM, then SIGKILL) in `close()`."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"gearctl-bench-{name}-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clusters: list[Path] = []
        self.clusters_made = 0

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def memcached(self, memory_mb: int = 1024) -> Endpoint:
        return self._memcached(memory_mb)[0]

    def _memcached(self, memory_mb: int) -> tuple[Endpoint, subprocess.Popen[bytes]]:
        endpoint = Endpoint(HOST, free_port())
        name = f"memcached-{endpoint.port}"
        proc = start_memcached(
            endpoint,
            memory_mb=memory_mb,
            log_path=self.dir / f"{name}.log",
            pid_path=self.dir / f"{name}.pid",
        )
        self.procs.append(proc)
        return endpoint, proc

    def submit_ceiling(self, count: int, payload_bytes: int = PAYLOAD_BYTES) -> float:
        """The ceiling of a restore of `count` jobs, in jobs/s: their pipelined submit into a
        fresh gearmand (the agent's flags) on a fresh, empty memcached, which persists every job
        before JOB_CREATED as a restore's target does. Both are stopped afterwards, so a bench
        can measure it in every round, next to the restores it is the ceiling of."""
        batch = jobs(count, "ceiling", payload_bytes)
        store, store_proc = self._memcached(1024)
        gearmand, gearmand_proc = self.gearmand(store, "g1_")
        try:
            return count / submit(gearmand, batch)
        finally:
            for proc in (gearmand_proc, store_proc):
                self.kill9(proc)

    def gearmand(
        self, store: Endpoint, prefix: str | None
    ) -> tuple[Endpoint, subprocess.Popen[bytes]]:
        """A gearmand with the agent's flags on `store`; prefix None = gearmand's default."""
        endpoint = Endpoint(HOST, free_port())
        launch = GearmandLaunch(
            endpoint=endpoint,
            store=store,
            prefix=prefix or "",
            log_path=self.dir / f"gearmand-{endpoint.port}.log",
            pid_path=self.dir / f"gearmand-{endpoint.port}.pid",
            threads=io_threads(),
            buckets=hashtable_buckets(DEFAULT_EXPECTED_QUEUE_DEPTH),
        )
        argv = launch.argv(require_binary("gearmand", "gearman-job-server"))
        if prefix is None:  # plain gearmand: no --libmemcached-prefix at all
            argv = [a for a in argv if not a.startswith("--libmemcached-prefix")]
        proc = spawn(argv, log_path=self.dir / f"gearmand-{endpoint.port}.stdout.log")
        self.procs.append(proc)
        wait_until(lambda: is_serving(endpoint, 0.5), timeout=120, what=f"gearmand {endpoint}",
                   alive=lambda: proc.poll() is None, log_path=launch.log_path)  # fmt: skip
        return endpoint, proc

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL one of our processes by its PID; it is no longer ours to stop at the end."""
        kill_pid(proc.pid)
        proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def cluster(
        self,
        nodes: int,
        session_timeout: float | None = None,
        *,
        twins: bool = True,
        store_mb: int | None = None,
        placement: localcluster.Placement | None = None,
        spread: bool = False,
    ) -> localcluster.LocalCluster:
        """A local cluster (`gearctl cluster up`) in a fresh directory on a free port block;
        `twins=False`: one store per node (a plan as made before twin stores), `store_mb`: each
        memcached's -m, `placement`: its nodes' hosts (network namespaces), `spread`: `cluster
        up --spread`."""
        # A fresh directory each time: `up` on an old one would reuse its plan (timeout, ports).
        self.clusters_made += 1
        directory = self.dir / f"cluster{self.clusters_made}"
        self.clusters.append(directory)
        timeout = session_timeout or localcluster.DEFAULT_SESSION_TIMEOUT
        placement = placement or localcluster.Placement()
        base = free_port_block(localcluster.PORT_BLOCK, placement.services)
        plan = localcluster.LocalCluster.plan(directory, nodes, base, timeout, 1, placement)
        for node in plan.nodes if not twins else ():
            node.twin = None
        if store_mb is not None:
            plan.store_mb = store_mb
        plan.spread = spread
        directory.mkdir(parents=True)
        plan.save()  # `up` starts what this plan says
        return localcluster.up(directory, nodes, base, _quiet, timeout)

    def cluster_down(self, cluster: localcluster.LocalCluster) -> None:
        localcluster.down(cluster.dir, _quiet)
        self.clusters.remove(cluster.dir)

    def close(self) -> None:
        for directory in reversed(self.clusters):
            try:
                localcluster.down(directory, _quiet)
            except Exception as exc:  # keep stopping the rest
                print(f"cluster down {directory} failed: {exc}", file=sys.stderr)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                stop_pid(proc.pid, timeout=10)
            proc.wait()
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _quiet(_message: str) -> None:
    pass


def stop_agent(pid: int) -> None:
    """SIGTERM an agent (it stops its gearmand and closes its ZooKeeper session) and wait."""
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _alive(pid), timeout=30, what=f"agent {pid} to exit")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def poll(check: Callable[[], Any], *, interval: float, timeout: float, what: str) -> Any:
    """Call `check` every `interval` until it returns a truthy value; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise GearctlError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown")  # fmt: skip
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_mb": mem_kb // 1024,
            "python": platform.python_version()}  # fmt: skip


def save(name: str, data: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` (`<name>.quick.json` for a --quick smoke run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if data.get('quick') else ''}.json"
    data = {"bench": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            **data}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path
