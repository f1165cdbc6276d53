"""A tree created before the credentials were set: `gearctl acl check` lists its open znodes, an
agent with credentials refuses to run on it, `gearctl acl fix` closes them, and the agent runs."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from cluster.coord import ClusterPaths
from cluster.endpoint import Endpoint
from cluster.process import free_port, stop_pid
from tests.conftest import HOST
from tests.test_zk_acl import wait_serving

pytestmark = pytest.mark.integration


def gearctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], capture_output=True, text=True, timeout=60
    )


def test_open_tree_is_refused_then_fixed(
    tmp_path: Path, memcached: Endpoint, zookeeper: Endpoint
) -> None:
    cluster = f"open{free_port()}"
    paths = ClusterPaths(cluster)
    anonymous = KazooClient(hosts=str(zookeeper))
    anonymous.start(timeout=10)
    try:
        # What an agent without credentials leaves: every znode open to anyone.
        anonymous.create(f"{paths.store('node1')}/epoch", b"3", makepath=True)
        anonymous.create(f"{paths.root}/functions/resize", b"", makepath=True)
        secret = tmp_path / "zk.secret"
        secret.write_text(f"gearctl:{secrets.token_urlsafe(16)}\n")
        secret.chmod(0o600)
        where = ["--zookeeper", str(zookeeper), "--cluster", cluster]

        check = gearctl("acl", "check", *where)
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"writable by anyone: {paths.store('node1')}/epoch" in check.stdout

        config = tmp_path / "agent.toml"
        config.write_text(
            f'[node]\nname = "node1"\ncluster = "{cluster}"\n'
            f'[gearmand]\nlisten = "{Endpoint(HOST, free_port())}"\n'
            f'[store]\naddress = "{memcached}"\n'
            f'[zookeeper]\nhosts = "{zookeeper}"\nauth_file = "{secret}"\n'
            f'[paths]\nrun_dir = "{tmp_path}"\n'
        )
        agent = [sys.executable, "-m", "cluster", "agent", "run", "--config", str(config)]
        refused = subprocess.run(agent, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "refusing to run" in refused.stderr and "gearctl acl fix" in refused.stderr
        assert anonymous.exists(paths.member("node1")) is None  # it never registered

        fixed = gearctl("acl", "fix", *where, "--auth-file", str(secret))
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert f"closed: {paths.root}\n" in fixed.stdout
        assert gearctl("acl", "check", *where).returncode == 0
        assert anonymous.get(f"{paths.store('node1')}/epoch")[0] == b"3"  # still readable
        with pytest.raises(NoAuthError):
            anonymous.set(f"{paths.store('node1')}/epoch", b"4")
        with pytest.raises(NoAuthError):
            anonymous.create(f"{paths.stores}/intruder", b"")

        with (tmp_path / "agent.out").open("ab") as log:
            proc = subprocess.Popen(agent, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(proc, anonymous, paths.member("node1"), tmp_path / "agent.out")
        finally:
            stop_pid(proc.pid, timeout=15)
    finally:
        anonymous.stop()
        anonymous.close()


def test_fix_needs_the_credentials(zookeeper: Endpoint) -> None:
    result = gearctl("acl", "fix", "--zookeeper", str(zookeeper), "--cluster", "x")
    assert result.returncode != 0
    assert "--auth-file" in result.stderr
