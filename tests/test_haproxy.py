"""deploy/haproxy.cfg in front of three agents: an HTTP check on /health takes a hung node out.

A real haproxy runs the example config, changed only where a test must (its listen address, the
stats socket, the nodes' addresses and check ports); `gearman` CLI clients submit through it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster.endpoint import Endpoint
from cluster.gearman.admin import AdminClient
from cluster.process import free_port, stop_pid
from tests.conftest import HOST
from tests.healthnodes import HealthNode, health_nodes, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed "
                       "(Debian's `haproxy`; scripts/bootstrap.sh installs it)"),
]  # fmt: skip

EXAMPLE = Path(__file__).parent.parent / "deploy" / "haproxy.cfg"


def test_config(nodes: list[HealthNode], listen: Endpoint, stats: Path) -> str:
    """The example with this test's addresses: every other line (checks, timeouts) as shipped."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        if line.strip().startswith("server "):
            continue
        line = re.sub(r"^(\s*)bind \S+", rf"\1bind {listen}", line)
        line = re.sub(r"^(\s*)stats socket \S+", rf"\1stats socket {stats}", line)
        lines.append(line)
        if line.strip().startswith("default-server"):
            lines += [f"    server {n.name} {n.gearman} check port {n.metrics.port}" for n in nodes]
    return "\n".join(lines) + "\n"


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextmanager
def haproxy(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(config.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    try:
        yield proc
    finally:
        stop_pid(proc.pid)
        proc.wait()


def server_states(stats: Path) -> dict[str, str]:
    """{server: UP/DOWN/...} from haproxy's stats socket (`show stat`, CSV)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    rows = [line.split(",") for line in text.decode().splitlines() if line and line[0] != "#"]
    return {row[1]: row[17] for row in rows if row[0] == "gearman" and row[1] not in
            ("FRONTEND", "BACKEND")}  # fmt: skip


def submit_through(listen: Endpoint, function: str, count: int) -> None:
    for number in range(count):
        subprocess.run(
            ["gearman", "-h", listen.host, "-p", str(listen.port), "-t", "10000", "-b",
             "-f", function, "-u", f"{function}-{number}", "-s"],
            check=True, timeout=30, capture_output=True,
        )  # fmt: skip


def queued(node: HealthNode, function: str) -> int:
    found = [f.queued for f in AdminClient(node.gearman, timeout=5).status() if f.name == function]
    return sum(found)


def test_haproxy_stops_sending_jobs_to_a_node_whose_gearmand_hangs(
    tmp_path: Path, zookeeper: Endpoint
) -> None:
    with health_nodes(tmp_path, zookeeper, 3) as nodes:
        listen, stats = Endpoint(HOST, free_port()), tmp_path / "haproxy.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(test_config(nodes, listen, stats))
        with haproxy(config) as proc:
            wait_for(lambda: stats.exists() and set(server_states(stats).values()) == {"UP"},
                     "haproxy sees every node up")  # fmt: skip
            submit_through(listen, "before", 6)
            assert all(queued(n, "before") >= 1 for n in nodes), "round robin over all three"

            hung = nodes[1]
            hung_pid = int(hung.health()[1]["gearmand_pid"])
            os.kill(hung_pid, signal.SIGSTOP)
            try:
                wait_for(lambda: server_states(stats)[hung.name] == "DOWN",
                         "haproxy marks the hung node down")  # fmt: skip
                submit_through(listen, "after", 10)
                others = [n for n in nodes if n is not hung]
                assert sum(queued(n, "after") for n in others) == 10
            finally:
                os.kill(hung_pid, signal.SIGCONT)
            assert queued(hung, "after") == 0
            assert proc.poll() is None
