"""The container variant of the store test: runs where a Docker engine answers, else skips.

These machines have the docker client but no engine, so this test skips here with the reason;
the same store enumeration runs against local processes in tests/test_store.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster.endpoint import Endpoint
from cluster.store import Store

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def _docker_unreachable() -> str | None:
    """Why Docker cannot be used here, or None when an engine answers."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        return f"the docker package is missing ({exc})"
    try:
        docker.from_env().ping()
    except DockerException as exc:
        return f"no Docker engine reachable ({exc.__class__.__name__}); local processes are used"
    return None


@pytest.fixture(scope="module")
def container_store() -> Iterator[Endpoint]:
    reason = _docker_unreachable()
    if reason is not None:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer("memcached:1.6").with_command("-M -m 64 -vv").with_exposed_ports(11211)
    )
    with container:
        wait_for_logs(container, "server listening", timeout=30)
        host = container.get_container_host_ip()
        yield Endpoint(host, int(container.get_exposed_port(11211)))


def test_snapshot_of_a_containerised_store_equals_curr_items(container_store: Endpoint) -> None:
    store = Store(container_store)
    for n in range(2000):
        store.set(f"g1_img-resize-job-{n}", b"x" * 64, n % 3)
    items = store.snapshot()
    assert len(items) == store.curr_items() == 2000
    assert [item.cas for item in items] == sorted(item.cas for item in items)
