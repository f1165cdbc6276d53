"""Launch gearmand on the libmemcached queue with tuned flags, and tell when it serves."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.endpoint import Endpoint
from cluster.process import ensure_port_free, require_binary, spawn

# gearmand's own default is 991 buckets, which makes inserts slow down as the queue deepens
# (design §1: 177k/s for the first 25k jobs, 23k/s at 200k queued).
DEFAULT_EXPECTED_QUEUE_DEPTH = 200_000


def hashtable_buckets(expected_queue_depth: int) -> int:
    """The smallest prime >= the expected queue depth (one job per bucket on average)."""
    candidate = max(991, expected_queue_depth) | 1
    while not _is_prime(candidate):
        candidate += 2
    return candidate


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def io_threads(cores: int | None = None) -> int:
    """gearmand I/O threads: half the cores, at least one (`-t 1` beat `-t 4` on 2 cores)."""
    return max(1, (cores or os.cpu_count() or 1) // 2)


@dataclass(frozen=True)
class GearmandLaunch:
    """Everything one gearmand start needs; `prefix` is this incarnation's key prefix."""

    endpoint: Endpoint
    store: Endpoint
    prefix: str
    log_path: Path
    pid_path: Path
    threads: int
    buckets: int
    verbose: str = "WARNING"

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            "--listen", self.endpoint.host,
            "--port", str(self.endpoint.port),
            "--threads", str(self.threads),
            "--hashtable-buckets", str(self.buckets),
            "--queue-type", "libmemcached",
            f"--libmemcached-servers={self.store}",
            f"--libmemcached-prefix={self.prefix}",
            "--log-file", str(self.log_path),
            "--pid-file", str(self.pid_path),
            "--verbose", self.verbose,
        ]  # fmt: skip


def start_gearmand(launch: GearmandLaunch) -> subprocess.Popen[bytes]:
    """Start gearmand; it is not ready until `cluster.gearman.admin.is_serving` says so.

    gearmand dies with the thread that starts it (the agent's main thread): an agent killed
    by its watchdog, or by anyone, leaves no gearmand serving a store it no longer owns."""
    binary = require_binary("gearmand", "gearman-job-server")
    ensure_port_free(launch.endpoint, f"gearmand {launch.endpoint}")
    stdout_log = launch.log_path.with_name(launch.log_path.stem + ".stdout.log")
    return spawn(launch.argv(binary), log_path=stdout_log, die_with_parent=True)
