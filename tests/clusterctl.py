"""Drive a real local cluster through the `gearctl` CLI, as a user would."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from cluster.endpoint import Endpoint
from cluster.local.cluster import PORT_BLOCK
from tests.conftest import free_port_block


def gearctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def status_json(directory: Path) -> dict[str, Any]:
    result = gearctl("cluster", "status", "--dir", str(directory), "--json")
    assert result.returncode in (0, 3), result.stderr  # 3: degraded (a node not serving)
    return json.loads(result.stdout)


@contextmanager
def local_cluster(directory: Path, nodes: int = 3) -> Iterator[Path]:
    """`cluster up` on a free block of ports; `cluster down` afterwards, whatever happens."""
    base = free_port_block(PORT_BLOCK)
    args = ("--nodes", str(nodes), "--dir", str(directory), "--port-base", str(base))
    result = gearctl("cluster", "up", *args)
    try:
        assert result.returncode == 0, result.stderr
        yield directory
    finally:
        gearctl("cluster", "down", "--dir", str(directory))


def up_again(directory: Path) -> None:
    """`cluster up` on an existing cluster: restarts whatever is not running."""
    nodes = len(json.loads((directory / "cluster.json").read_text())["nodes"])
    result = gearctl("cluster", "up", "--nodes", str(nodes), "--dir", str(directory))
    assert result.returncode == 0, result.stderr


def node(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in status["nodes"] if n["name"] == name)


def gearman(node_status: dict[str, Any]) -> Endpoint:
    return Endpoint.parse(node_status["gearman"])


def kill_node(node_status: dict[str, Any]) -> None:
    """Node loss: SIGKILL the agent and its gearmand together (the store survives)."""
    for pid in (node_status["agent_pid"], node_status["gearmand_pid"]):
        if pid:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def wait_until(
    directory: Path, predicate: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = status_json(directory)
    while not predicate(status):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s; last status {status}")
        time.sleep(0.1)
        status = status_json(directory)
    return status
