"""ZooKeeper digest ACLs: an agent with credentials builds and writes its cluster's tree; a client
without them (or with a wrong password) can read it but cannot change, add or delete a znode."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import Permissions

from cluster.config import render_config
from cluster.coord import ClusterPaths
from cluster.endpoint import Endpoint
from cluster.process import free_port, read_pidfile, stop_pid
from cluster.zkclient import ZkCredentials, make_client
from tests.conftest import HOST

pytestmark = pytest.mark.integration


def started(client: KazooClient) -> KazooClient:
    client.start(timeout=10)
    return client


def walk(zk: KazooClient, path: str) -> Iterator[str]:
    yield path
    for child in zk.get_children(path):
        yield from walk(zk, f"{path}/{child}")


def wait_serving(
    proc: subprocess.Popen[bytes], zk: KazooClient, member: str, log: Path, timeout: float = 60
) -> None:
    """Until the agent's member record says `serving`; fails with its log if it dies first."""
    deadline = time.monotonic() + timeout
    state = None
    while state != "serving":
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
        try:
            state = json.loads(zk.get(member)[0])["state"]
        except NoNodeError:
            state = None


@pytest.fixture
def secured_agent(
    tmp_path: Path, memcached: Endpoint, zookeeper: Endpoint
) -> Iterator[tuple[ClusterPaths, str, ZkCredentials]]:
    """A real agent with digest credentials, serving; yields its paths, node and credentials."""
    cluster, node = f"acl{free_port()}", "node1"
    credentials = ZkCredentials("gearctl", secrets.token_urlsafe(16))
    secret = tmp_path / "zk.secret"
    secret.write_text(f"{credentials.user}:{credentials.password}\n")
    secret.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        render_config(
            node=node,
            cluster=cluster,
            gearman=Endpoint(HOST, free_port()),
            store=memcached,
            zookeeper=str(zookeeper),
            auth_file=secret,
            run_dir=tmp_path,
        )
    )
    with (tmp_path / "agent.out").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster", "agent", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    paths = ClusterPaths(cluster)
    anonymous = started(KazooClient(hosts=str(zookeeper)))
    try:
        wait_serving(proc, anonymous, paths.member(node), tmp_path / "agent.out")
        yield paths, node, credentials
    finally:
        anonymous.stop()
        anonymous.close()
        stop_pid(proc.pid, timeout=15)
        proc.wait()
        stop_pid(read_pidfile(tmp_path / "gearmand.pid"))


def test_only_the_credentials_write_the_cluster_tree(
    secured_agent: tuple[ClusterPaths, str, ZkCredentials], zookeeper: Endpoint
) -> None:
    paths, node, credentials = secured_agent
    wrong = ZkCredentials(credentials.user, credentials.password + "x")
    for client in (make_client(str(zookeeper), 4.0), make_client(str(zookeeper), 4.0, wrong)):
        zk = started(client)
        try:
            # Reading works without credentials (clients discover servers this way) ...
            tree = list(walk(zk, paths.root))
            assert paths.member(node) in tree
            assert paths.store_owner(node) in tree
            record, _ = zk.get(paths.member(node))
            assert json.loads(record)["node"] == node
            # ... every znode the agent made carries the digest ACL and no write for others.
            for path in tree:
                acls, _ = zk.get_acls(path)
                schemes = {(acl.id.scheme, acl.perms) for acl in acls}
                assert ("digest", Permissions.ALL) in schemes, path
                assert all(
                    acl.perms == Permissions.READ for acl in acls if acl.id.scheme != "digest"
                ), path
            # ... but nothing can be changed, added or removed.
            with pytest.raises(NoAuthError):
                zk.set(paths.member(node), b'{"node": "evil"}')
            with pytest.raises(NoAuthError):
                zk.create(paths.member("intruder"), b"{}", ephemeral=True)
            with pytest.raises(NoAuthError):
                zk.create(f"{paths.root}/extra", b"")
            with pytest.raises(NoAuthError):
                zk.delete(paths.store_owner(node))
            with pytest.raises(NoAuthError):
                zk.set_acls(paths.root, [*zk.get_acls(paths.root)[0]])
        finally:
            zk.stop()
            zk.close()

    zk = started(make_client(str(zookeeper), 4.0, credentials))
    try:
        # The same identity (what the agent uses) may write: add and remove a member record.
        zk.create(paths.member("probe"), b"{}", ephemeral=True)
        zk.set(paths.member("probe"), b'{"node": "probe"}')
        zk.delete(paths.member("probe"))
    finally:
        zk.stop()
        zk.close()


@pytest.mark.parametrize("credentials", [None, ZkCredentials("gearctl", "secret")])
def test_clients_retry_zookeeper_at_least_every_second(credentials: ZkCredentials | None) -> None:
    """kazoo's own reconnect backoff grows to an hour: after a partition healed, an agent would
    wait long past the heal before it even tried (the partition-node drill caught it)."""
    client = make_client("127.0.0.1:1", 4.0, credentials)
    retry = client._conn_retry  # kazoo has no public reader of its reconnect policy
    assert retry.max_tries == -1
    assert retry.max_delay <= 1.0
