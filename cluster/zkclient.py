"""The one place gearctl builds its ZooKeeper clients, with digest credentials when configured.

With credentials, the client authenticates (`digest` scheme) and every znode it creates gets the
ACL `digest:<user>:<hash>` with all permissions plus `world:anyone` READ: anyone who reaches
ZooKeeper can read the member records (clients discover servers without credentials), but only
holders of the credentials can create, change or delete the cluster's znodes.

The credentials live in a file of their own (`[zookeeper] auth_file`), one line `user:password`,
readable by its owner only (like an ssh key: a group- or world-readable file is refused).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry
from kazoo.security import ACL, READ_ACL_UNSAFE, make_digest_acl

from cluster.errors import ConfigError

RECONNECT_MAX_DELAY = 1.0  # seconds: the longest pause between two tries to reach ZooKeeper


@dataclass(frozen=True)
class ZkCredentials:
    """A ZooKeeper digest identity; the password never appears in repr or logs."""

    user: str
    password: str = field(repr=False)

    @property
    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]

    @property
    def acl(self) -> list[ACL]:
        """Everything for this identity, read for everyone."""
        return [make_digest_acl(self.user, self.password, all=True), *READ_ACL_UNSAFE]


def read_credentials(path: Path) -> ZkCredentials:
    """Read `user:password` from `path`; ConfigError if unreadable, malformed or not 0600-like."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: mode {stat.S_IMODE(mode):04o} lets others read it; use 0600 (owner only)"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    user, sep, password = lines[0].strip().partition(":") if len(lines) == 1 else ("", "", "")
    if not sep or not user or not password or any(c.isspace() for c in user + password):
        raise ConfigError(f"{path}: must hold one line `user:password` (no spaces)")
    return ZkCredentials(user, password)


def make_client(
    hosts: str, timeout: float, credentials: ZkCredentials | None = None
) -> KazooClient:
    """A kazoo client (not started); with credentials it authenticates and creates with its ACL.

    kazoo's default reconnect backoff doubles up to an hour: after a partition of ten seconds
    an agent would wait tens of seconds more before it even tried ZooKeeper again. Here it tries
    at least every RECONNECT_MAX_DELAY seconds, forever."""
    retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=RECONNECT_MAX_DELAY)
    if credentials is None:
        return KazooClient(hosts=hosts, timeout=timeout, connection_retry=retry)
    return KazooClient(
        hosts=hosts,
        timeout=timeout,
        connection_retry=retry,
        auth_data=credentials.auth_data,
        default_acl=credentials.acl,
    )
