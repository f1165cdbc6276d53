"""The agent's TOML configuration: valid files load, every bad field is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.endpoint import Endpoint
from cluster.errors import ConfigError

VALID = """
[node]
name = "node1"
cluster = "main"
[gearmand]
listen = "127.0.0.1:4730"
[store]
address = "127.0.0.1:11211"
[zookeeper]
hosts = "127.0.0.1:2181,127.0.0.2"
session_timeout = 2
[paths]
run_dir = "/tmp/gearctl-node1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.node == "node1"
    assert config.gearman == Endpoint("127.0.0.1", 4730)
    assert config.store == Endpoint("127.0.0.1", 11211)
    assert config.session_timeout == 2.0
    assert config.threads == 0
    assert config.expected_queue_depth == 200_000


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "node1"', 'name = "no de"', "node.name"),
        ('name = "node1"', "", "missing field node.name"),
        ('listen = "127.0.0.1:4730"', 'listen = "127.0.0.1:99999"', "gearmand.listen"),
        ('address = "127.0.0.1:11211"', 'address = "127.0.0.1:x"', "store.address"),
        ('hosts = "127.0.0.1:2181,127.0.0.2"', 'hosts = "a:1,:2"', "zookeeper.hosts"),
        ("session_timeout = 2", "session_timeout = 0.1", "zookeeper.session_timeout"),
        ("session_timeout = 2", 'session_timeout = "2"', "zookeeper.session_timeout"),
        ("session_timeout = 2", "sesion_timeout = 2", "unknown field zookeeper.sesion_timeout"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, VALID.replace(old, new)))


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
