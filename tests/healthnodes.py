"""Agents with their HTTP endpoints on, for the /health and HAProxy tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cluster.endpoint import Endpoint
from cluster.local.memcached_server import start_memcached
from cluster.process import free_port, stop_pid, wait_until
from tests.conftest import HOST
from tests.test_agent import AgentNode


def get(url: str, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a GET; (0, {"error": ...}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError as error:
        return 0, {"error": str(error)}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    wait_until(check, timeout=timeout, what=what, interval=0.1)


class HealthNode(AgentNode):
    """An agent whose watchdog leaves a hung gearmand alone (so /health alone must see it)."""

    metrics: Endpoint

    def health(self, path: str = "/health") -> tuple[int, dict[str, Any]]:
        return get(f"http://{self.metrics}{path}")

    def wait_health(self, code: int, path: str = "/health") -> dict[str, Any]:
        answers: list[dict[str, Any]] = []

        def answered() -> bool:
            status, body = self.health(path)
            answers[:] = [body]
            return status == code

        wait_for(answered, f"{self.name} {path} answers {code} (last: {answers})")
        return answers[0]


@contextmanager
def health_nodes(
    tmp_path: Path, zookeeper: Endpoint, count: int, cluster: str | None = None
) -> Iterator[list[HealthNode]]:
    """`count` serving agents, each with its own memcached, in a cluster of their own."""
    cluster = cluster or f"h{free_port()}"
    with ExitStack() as stack:
        nodes = []
        for index in range(count):
            name = f"node{index + 1}"
            run_dir = tmp_path / cluster / name
            run_dir.mkdir(parents=True)
            store = Endpoint(HOST, free_port())
            memcached = start_memcached(store, memory_mb=64, log_path=run_dir / "memcached.log",
                                        pid_path=run_dir / "memcached.pid")  # fmt: skip
            stack.callback(lambda pid=memcached.pid: stop_pid(pid))
            node = HealthNode(name, Endpoint(HOST, free_port()), store, zookeeper,
                              run_dir / "agent.toml", run_dir)  # fmt: skip
            node.metrics = Endpoint(HOST, free_port())
            node.config.write_text(
                f'[node]\nname = "{name}"\ncluster = "{cluster}"\n'
                f'[gearmand]\nlisten = "{node.gearman}"\nthreads = 1\n'
                f'[store]\naddress = "{store}"\n'
                f'[zookeeper]\nhosts = "{zookeeper}"\nsession_timeout = 4.0\n'
                f'[paths]\nrun_dir = "{run_dir}"\n'
                f"[watchdog]\nhang_checks = 100\n"
                f'[metrics]\naddress = "{HOST}"\nport = {node.metrics.port}\n'
            )
            node.start()
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            node.wait_health(200)
        yield nodes
