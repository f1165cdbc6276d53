"""Which cluster an operator command works on, and one ZooKeeper session to it.

Each of ZooKeeper hosts, cluster name and credentials file comes from the first of:

1. flags: `--zookeeper`, `--cluster`, `--auth-file`;
2. environment: `GEARCTL_ZOOKEEPER`, `GEARCTL_CLUSTER`, `GEARCTL_AUTH_FILE`;
3. a config file: `--config FILE`, else `/etc/gearctl/agent.toml` (an agent's own file: its
   `[zookeeper] hosts`, `[zookeeper] auth_file` and `[node] cluster`), else
   `~/.config/gearctl/gearctl.toml` (the same keys; `[cluster] name` may stand for
   `[node] cluster`);
4. else, with no ZooKeeper found above, the local cluster in `.gearctl`.

`--dir` given on the command line means the local cluster, whatever the rest says. A cluster
whose name is not given is the only one in that ZooKeeper. A name that is not there is an error
that lists the clusters that are: no command creates znodes for a mistyped name.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import coord, zkclient
from cluster.coord import Coordination, CoordinationRefused
from cluster.errors import ConfigError, GearctlError

if TYPE_CHECKING:
    from cluster.local.cluster import LocalCluster

SYSTEM_CONFIG = Path("/etc/gearctl/agent.toml")
USER_CONFIG = Path("~/.config/gearctl/gearctl.toml")
ENV_ZOOKEEPER = "GEARCTL_ZOOKEEPER"
ENV_CLUSTER = "GEARCTL_CLUSTER"
ENV_AUTH_FILE = "GEARCTL_AUTH_FILE"
AGENT_DEFAULT_CLUSTER = "main"  # what an agent's TOML without [node] cluster means


class ClusterNotFound(GearctlError):
    """The cluster name is not in ZooKeeper (or none was given and there is not exactly one)."""


@dataclass(frozen=True)
class Target:
    """A cluster to work on: its ZooKeeper, name (None: the only one there) and credentials."""

    zookeeper: str
    cluster: str | None
    auth_file: Path | None = None
    local: LocalCluster | None = None  # set when it is the local cluster: PIDs can be shown
    source: str = ""  # where the ZooKeeper address came from, for messages

    @classmethod
    def of_local(cls, local: LocalCluster) -> Target:
        return cls(local.zookeeper, local.cluster, None, local, f"--dir {local.dir}")


@dataclass(frozen=True)
class Flags:
    """The command line's say (None: not given)."""

    directory: Path | None = None
    zookeeper: str | None = None
    cluster: str | None = None
    auth_file: Path | None = None
    config: Path | None = None


def resolve(flags: Flags, environ: Mapping[str, str] | None = None) -> Target:
    """The target named by flags, environment, config file or local directory (module doc)."""
    env = os.environ if environ is None else environ
    if flags.directory is not None:
        if flags.zookeeper is not None or flags.config is not None:
            raise ConfigError("give --dir (a local cluster) or --zookeeper/--config, not both")
        return Target.of_local(_local(flags.directory))
    zookeeper, source = flags.zookeeper, "--zookeeper"
    if zookeeper is None and env.get(ENV_ZOOKEEPER):
        zookeeper, source = env[ENV_ZOOKEEPER], ENV_ZOOKEEPER
    cluster = flags.cluster or env.get(ENV_CLUSTER) or None
    auth = flags.auth_file or (Path(env[ENV_AUTH_FILE]) if env.get(ENV_AUTH_FILE) else None)
    if zookeeper is None:
        found = _config_file(flags.config)
        if found is not None:
            path, file_hosts, file_cluster, file_auth = found
            zookeeper, source = file_hosts, str(path)
            cluster = cluster or file_cluster
            auth = auth or file_auth
    if zookeeper is None:
        local = _local(None)
        if cluster is not None and cluster != local.cluster:
            raise ConfigError(f"the local cluster in {local.dir} is {local.cluster!r}, "
                              f"not {cluster!r}")  # fmt: skip
        return Target.of_local(local)
    return Target(zookeeper, cluster, auth, None, source)


def _local(directory: Path | None) -> LocalCluster:
    """The local cluster in `directory` (None: the default directory, chosen for want of any
    other cluster, which the error then says)."""
    from cluster.local.cluster import DEFAULT_DIR, LocalCluster

    where = "" if directory is not None else (
        f" and no cluster given (--zookeeper, {ENV_ZOOKEEPER}, --config, {SYSTEM_CONFIG} or "
        f"{USER_CONFIG})")  # fmt: skip
    directory = DEFAULT_DIR if directory is None else directory
    local = LocalCluster.load(directory)
    if local is None:
        raise GearctlError(f"no local cluster in {directory}{where}; start one with "
                           "`gearctl cluster up`")  # fmt: skip
    return local


def _config_file(given: Path | None) -> tuple[Path, str, str | None, Path | None] | None:
    """(file, ZooKeeper hosts, cluster name, auth file) from the first config file found."""
    if given is not None:
        candidates = [given]
    else:
        candidates = [p for p in (SYSTEM_CONFIG, USER_CONFIG.expanduser()) if p.exists()]
    for path in candidates:
        raw = _read_toml(path)
        hosts = _table(raw, "zookeeper", path).get("hosts")
        if not isinstance(hosts, str) or not hosts.strip():
            raise ConfigError(f"{path}: missing field zookeeper.hosts")
        node, named = _table(raw, "node", path), _table(raw, "cluster", path)
        cluster = named.get("name") or node.get("cluster")
        if cluster is None and "name" in node:  # an agent's file: the agent's default name
            cluster = AGENT_DEFAULT_CLUSTER
        auth = _table(raw, "zookeeper", path).get("auth_file")
        return path, hosts.strip(), cluster, Path(auth) if auth else None
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _table(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return table


def existing_cluster(names: list[str], target: Target) -> str:
    """The target's cluster name checked against `names` (those in ZooKeeper)."""
    listed = ", ".join(names) or "none"
    if target.cluster is None:
        if len(names) == 1:
            return names[0]
        raise ClusterNotFound(
            f"no gearctl cluster in ZooKeeper {target.zookeeper}" if not names else
            f"ZooKeeper {target.zookeeper} holds several clusters ({listed}): give --cluster"
        )  # fmt: skip
    if target.cluster not in names:
        raise ClusterNotFound(f"no cluster {target.cluster!r} in ZooKeeper {target.zookeeper} "
                              f"(from {target.source}); clusters there: {listed}")  # fmt: skip
    return target.cluster


def open_session(target: Target, timeout: float = 5.0) -> Coordination:
    """A started session on the target's cluster, checked to exist (ClusterNotFound); the
    caller closes it. A name not given is looked up first, on a session of its own."""
    credentials = zkclient.read_credentials(target.auth_file) if target.auth_file else None
    name = target.cluster
    if name is None:
        with coord.session(target.zookeeper, "", timeout, credentials) as lookup:
            name = existing_cluster(lookup.clusters(), target)
    found = coord.connect(target.zookeeper, name, timeout, credentials)
    try:
        existing_cluster(found.clusters(), replace(target, cluster=name))
    except GearctlError:
        found.close()
        raise
    return found


@contextmanager
def session(target: Target, timeout: float = 5.0) -> Iterator[Coordination]:
    """A started session on the target's existing cluster for the block; closed on exit."""
    found = open_session(target, timeout)
    try:
        yield found
    except CoordinationRefused as exc:
        raise GearctlError(
            f"ZooKeeper {target.zookeeper} refused the change (ACLs are on): give --auth-file "
            f"(or {ENV_AUTH_FILE}) with the cluster's credentials"
        ) from exc
    finally:
        found.close()
