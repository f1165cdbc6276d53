"""Shared fixtures: real memcached, gearmand and ZooKeeper processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.endpoint import Endpoint
from cluster.gearman.admin import is_serving
from cluster.gearmand_server import GearmandLaunch, start_gearmand
from cluster.local.memcached_server import DEFAULT_MEMORY_MB, start_memcached
from cluster.local.zookeeper_server import ZooKeeperLaunch, start_zookeeper
from cluster.process import free_port, free_port_block, stop_pid, wait_until

HOST = "127.0.0.1"
__all__ = ["HOST", "free_port_block"]


@contextmanager
def running_memcached(
    tmp_path: Path, name: str, memory_mb: int = DEFAULT_MEMORY_MB
) -> Iterator[Endpoint]:
    """A memcached (`-M -m memory_mb`) on a free loopback port, its log and PID file named after
    `name` in `tmp_path`; stopped by its PID at the end of the block."""
    endpoint = Endpoint(HOST, free_port())
    proc = start_memcached(
        endpoint,
        memory_mb=memory_mb,
        log_path=tmp_path / f"{name}.log",
        pid_path=tmp_path / f"{name}.pid",
    )
    try:
        yield endpoint
    finally:
        stop_pid(proc.pid)
        proc.wait()


@pytest.fixture
def memcached(tmp_path: Path) -> Iterator[Endpoint]:
    with running_memcached(tmp_path, "memcached") as endpoint:
        yield endpoint


@pytest.fixture
def twin_memcached(tmp_path: Path) -> Iterator[Endpoint]:
    """A second memcached: the twin store of `memcached` (twin stores, issue 18)."""
    with running_memcached(tmp_path, "memcached-twin") as endpoint:
        yield endpoint


@dataclass
class RunningGearmand:
    endpoint: Endpoint
    store: Endpoint
    prefix: str
    pid: int


@pytest.fixture
def gearmand(memcached: Endpoint, tmp_path: Path) -> Iterator[RunningGearmand]:
    """A gearmand persisting to the `memcached` fixture under prefix `g1_`."""
    launch = GearmandLaunch(
        endpoint=Endpoint(HOST, free_port()),
        store=memcached,
        prefix="g1_",
        log_path=tmp_path / "gearmand.log",
        pid_path=tmp_path / "gearmand.pid",
        threads=1,
        buckets=200003,
    )
    proc = start_gearmand(launch)
    try:
        wait_until(
            lambda: is_serving(launch.endpoint, 0.5),
            timeout=10,
            what="gearmand",
            alive=lambda: proc.poll() is None,
            log_path=launch.log_path,
        )
        yield RunningGearmand(launch.endpoint, memcached, launch.prefix, proc.pid)
    finally:  # also when it never came up
        stop_pid(proc.pid)
        proc.wait()


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    directory = tmp_path_factory.mktemp("zookeeper")
    launch = ZooKeeperLaunch(
        endpoint=Endpoint(HOST, free_port()),
        data_dir=directory / "data",
        log_path=directory / "zookeeper.log",
        pid_path=directory / "zookeeper.pid",
    )
    proc = start_zookeeper(launch)
    yield launch.endpoint
    stop_pid(proc.pid)
    proc.wait()
