"""The node agent's configuration: one TOML file, every field validated with its name in the error.

Example (deploy/agent.example.toml has the commented version):

    [node]
    name = "node1"
    cluster = "main"

    [gearmand]
    listen = "10.0.0.11:4730"

    [store]
    address = "10.0.0.21:11211"
    twin = "10.0.0.21:11212"   # optional: the second store (twin stores, docs/architecture.md)

    [zookeeper]
    hosts = "10.0.0.31:2181,10.0.0.32:2181,10.0.0.33:2181"

    [paths]
    run_dir = "/var/lib/gearctl"

    [metrics]
    port = 9400         # Prometheus /metrics on gearmand's listen host; 0 or absent: off

    [log]
    format = "json"     # "text" (default) or "json": one object per line

    [takeover]
    spread = false      # true (default): a dead node's jobs split among every live survivor;
                        # false: one survivor drains a dead node's whole store
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.endpoint import Endpoint
from cluster.errors import ConfigError
from cluster.gearmand_server import DEFAULT_EXPECTED_QUEUE_DEPTH
from cluster.logsetup import LOG_FORMATS
from cluster.zkclient import ZkCredentials, read_credentials

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    cluster: str
    gearman: Endpoint
    store: Endpoint
    zookeeper_hosts: str
    session_timeout: float
    run_dir: Path
    threads: int
    expected_queue_depth: int
    check_interval: float
    check_timeout: float
    hang_checks: int
    safety_margin: float
    # [zookeeper] auth_file: digest credentials (cluster/zkclient.py); None = no ACLs.
    zookeeper_auth: ZkCredentials | None = None
    metrics_port: int = 0  # [metrics] port: Prometheus /metrics; 0 = off
    metrics_host: str = ""  # [metrics] address; "" = gearmand's listen host
    log_format: str = "text"  # [log] format: see cluster.logsetup
    takeover_spread: bool = True  # [takeover] spread: cluster/spreaddrain.py; False = one drainer
    # [store] twin: the node's second memcached; successive gearmands use the twins in turn
    # (cluster.twinstore). None = one store.
    twin: Endpoint | None = None

    @property
    def stores(self) -> tuple[Endpoint, ...]:
        """The node's stores: `store`, then `twin` if any."""
        return (self.store,) if self.twin is None else (self.store, self.twin)

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def metrics(self) -> Endpoint | None:
        """Where the agent serves Prometheus metrics; None when they are off."""
        if not self.metrics_port:
            return None
        return Endpoint(self.metrics_host or self.gearman.host, self.metrics_port)


def load_config(path: Path) -> AgentConfig:
    """Read and validate an agent TOML file; ConfigError names the file and the field."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(raw: dict[str, Any]) -> AgentConfig:
    fields = _Fields(raw)
    config = AgentConfig(
        node=fields.name("node.name"),
        cluster=fields.name("node.cluster", default="main"),
        gearman=fields.endpoint("gearmand.listen", default_port=4730),
        store=fields.endpoint("store.address", default_port=11211),
        zookeeper_hosts=fields.zookeeper_hosts("zookeeper.hosts"),
        session_timeout=fields.number("zookeeper.session_timeout", default=4.0, low=1.0, high=60),
        run_dir=Path(fields.text("paths.run_dir", default="/var/lib/gearctl")),
        threads=int(fields.number("gearmand.threads", default=0, low=0, high=64)),
        expected_queue_depth=int(
            fields.number(
                "gearmand.expected_queue_depth",
                default=DEFAULT_EXPECTED_QUEUE_DEPTH,
                low=1,
                high=100_000_000,
            )
        ),
        check_interval=fields.number("watchdog.check_interval", default=0.2, low=0.01, high=60),
        check_timeout=fields.number("watchdog.check_timeout", default=1.0, low=0.05, high=60),
        hang_checks=int(fields.number("watchdog.hang_checks", default=3, low=1, high=100)),
        safety_margin=fields.number("zookeeper.safety_margin", default=0.3, low=0.0, high=20),
        zookeeper_auth=fields.credentials("zookeeper.auth_file"),
        metrics_port=fields.port("metrics.port"),
        metrics_host=fields.host("metrics.address"),
        log_format=fields.choice("log.format", LOG_FORMATS, default="text"),
        takeover_spread=fields.flag("takeover.spread", default=True),
        twin=fields.optional_endpoint("store.twin", default_port=11211),
    )
    fields.reject_unknown()
    if config.twin == config.store:
        raise ConfigError(
            f"store.twin = {str(config.twin)!r} is store.address: the twin must be another "
            "memcached instance (another port or host)"
        )
    if config.safety_margin >= config.session_timeout / 3:
        raise ConfigError(
            f"zookeeper.safety_margin = {config.safety_margin} must be below a third of "
            f"zookeeper.session_timeout ({config.session_timeout / 3:.2f})"
        )
    return config


class _Fields:
    """Typed look-ups of dotted keys in a parsed TOML document; remembers what was read."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.read: set[str] = set()

    def get(self, dotted: str, default: Any = None) -> Any:
        self.read.add(dotted)
        section, _, key = dotted.partition(".")
        table = self.raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        if key not in table:
            if default is None:
                raise ConfigError(f"missing field {dotted}")
            return default
        return table[key]

    def text(self, dotted: str, default: str | None = None) -> str:
        value = self.get(dotted, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{dotted} must be a non-empty string, not {value!r}")
        return value.strip()

    def name(self, dotted: str, default: str | None = None) -> str:
        value = self.text(dotted, default)
        if not NAME_PATTERN.match(value):
            raise ConfigError(
                f"{dotted} = {value!r}: use letters, digits, '.', '_' or '-' (at most 63)"
            )
        return value

    def endpoint(self, dotted: str, default_port: int) -> Endpoint:
        try:
            return Endpoint.parse(self.text(dotted), default_port=default_port)
        except ConfigError as exc:
            raise ConfigError(f"{dotted}: {exc}") from None

    def present(self, dotted: str) -> bool:
        """Is the optional field `dotted` given? (It counts as read either way.)"""
        self.read.add(dotted)
        section, _, key = dotted.partition(".")
        return key in self.raw.get(section, {})

    def optional_endpoint(self, dotted: str, default_port: int) -> Endpoint | None:
        return self.endpoint(dotted, default_port) if self.present(dotted) else None

    def zookeeper_hosts(self, dotted: str) -> str:
        value = self.text(dotted)
        for host in value.split(","):
            try:
                Endpoint.parse(host, default_port=2181)
            except ConfigError as exc:
                raise ConfigError(f"{dotted}: {exc}") from None
        return value

    def credentials(self, dotted: str) -> ZkCredentials | None:
        """An optional absolute path to a `user:password` file, read now (see zkclient)."""
        if not self.present(dotted):
            return None
        path = Path(self.text(dotted))
        if not path.is_absolute():
            raise ConfigError(f"{dotted} = {str(path)!r} must be an absolute path")
        try:
            return read_credentials(path)
        except ConfigError as exc:
            raise ConfigError(f"{dotted}: {exc}") from None

    def port(self, dotted: str) -> int:
        """An optional TCP port; 0 (the default) means off."""
        value = self.number(dotted, default=0, low=0, high=65535)
        if value != int(value):
            raise ConfigError(f"{dotted} = {value} must be a whole number")
        return int(value)

    def host(self, dotted: str) -> str:
        """An optional host name or IP address, without port ("" when absent)."""
        value = self.get(dotted, default="")
        if not isinstance(value, str) or ":" in value or value != value.strip():
            raise ConfigError(
                f"{dotted} must be a host name or IP address without port, not {value!r}"
            )
        return value

    def choice(self, dotted: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(dotted, default)
        if value not in choices:
            raise ConfigError(f"{dotted} = {value!r}: use one of {', '.join(choices)}")
        return str(value)

    def flag(self, dotted: str, default: bool) -> bool:
        value = self.get(dotted, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted} = {value!r}: use true or false")
        return value

    def number(self, dotted: str, default: float, low: float, high: float) -> float:
        value = self.get(dotted, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{dotted} must be a number, not {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{dotted} = {value} is outside {low}..{high}")
        return float(value)

    def reject_unknown(self) -> None:
        """Catch typos: a field nobody reads is an error, not silently ignored."""
        for section, table in self.raw.items():
            if not isinstance(table, dict):
                raise ConfigError(f"unknown top-level field {section!r}")
            for key in table:
                if f"{section}.{key}" not in self.read:
                    raise ConfigError(f"unknown field {section}.{key}")


def render_config(
    *,
    node: str,
    cluster: str,
    gearman: Endpoint | str,
    store: Endpoint | str,
    zookeeper: str,
    run_dir: Path,
    session_timeout: float | None = None,
    auth_file: Path | None = None,
    metrics: Endpoint | None = None,
    spread: bool = True,
    twin: Endpoint | str | None = None,
) -> str:
    """An agent TOML file with these values (what `load_config` reads back); the fields left
    None keep their defaults. `gearctl cluster up` and the tests write their agents' with it."""

    def text(value: object) -> str:
        return json.dumps(str(value))  # a TOML basic string: the same escapes as JSON

    lines = [
        "[node]",
        f"name = {text(node)}",
        f"cluster = {text(cluster)}",
        "[gearmand]",
        f"listen = {text(gearman)}",
        "[store]",
        f"address = {text(store)}",
    ]
    if twin is not None:
        lines.append(f"twin = {text(twin)}")
    lines += ["[zookeeper]", f"hosts = {text(zookeeper)}"]
    if session_timeout is not None:
        lines.append(f"session_timeout = {session_timeout}")
    if auth_file is not None:
        lines.append(f"auth_file = {text(auth_file)}")
    lines += ["[paths]", f"run_dir = {text(run_dir)}"]
    if metrics is not None:
        lines += ["[metrics]", f"address = {text(metrics.host)}", f"port = {metrics.port}"]
    lines += ["[takeover]", f"spread = {str(spread).lower()}"]
    return "\n".join(lines) + "\n"
