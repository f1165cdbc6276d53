"""Launch a memcached store for one gearmand: `-M` so a full store refuses writes, never evicts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pymemcache.client.base import Client

from cluster.endpoint import Endpoint
from cluster.process import ensure_port_free, require_binary, spawn, wait_until

DEFAULT_MEMORY_MB = 256


def memcached_argv(binary: str, endpoint: Endpoint, memory_mb: int) -> list[str]:
    argv = [binary, "-l", endpoint.host, "-p", str(endpoint.port), "-U", "0"]
    argv += ["-M", "-m", str(memory_mb)]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without naming a user
    return argv


def memcached_answers(endpoint: Endpoint, timeout: float = 0.5) -> bool:
    """True if memcached at `endpoint` answers `version`."""
    client = Client((endpoint.host, endpoint.port), connect_timeout=timeout, timeout=timeout)
    try:
        client.version()
        return True
    except Exception:
        return False
    finally:
        client.close()


def start_memcached(
    endpoint: Endpoint, *, memory_mb: int, log_path: Path, pid_path: Path, timeout: float = 10.0
) -> subprocess.Popen[bytes]:
    """Start memcached and return once it answers; raise LaunchError (with its log) otherwise."""
    binary = require_binary("memcached", "memcached")
    ensure_port_free(endpoint, f"memcached store {endpoint}")
    proc = spawn(memcached_argv(binary, endpoint, memory_mb), log_path=log_path, pid_path=pid_path)
    wait_until(
        lambda: memcached_answers(endpoint),
        timeout=timeout,
        what=f"memcached on {endpoint}",
        alive=lambda: proc.poll() is None,
        log_path=log_path,
    )
    return proc
