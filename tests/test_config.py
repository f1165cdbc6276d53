"""The agent's TOML configuration: valid files load, every bad field is named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.config import load_config, render_config
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


def with_twin(twin: str) -> str:
    return VALID.replace("[zookeeper]", f"twin = {twin!r}\n[zookeeper]".replace("'", '"'))


def test_twin_store_is_optional_and_renders_back(tmp_path: Path) -> None:
    one = load_config(write(tmp_path, VALID))
    assert one.twin is None and one.stores == (Endpoint("127.0.0.1", 11211),)
    twins = load_config(write(tmp_path, with_twin("127.0.0.1:11212")))
    assert twins.stores == (Endpoint("127.0.0.1", 11211), Endpoint("127.0.0.1", 11212))
    text = render_config(node="n", cluster="c", gearman="127.0.0.1:4730", store=twins.store,
                         twin=twins.twin, zookeeper="127.0.0.1:2181", run_dir=tmp_path)  # fmt: skip
    assert load_config(write(tmp_path, text)).stores == twins.stores
    no_twin = render_config(node="n", cluster="c", gearman="127.0.0.1:4730", store=twins.store,
                            zookeeper="127.0.0.1:2181", run_dir=tmp_path)  # fmt: skip
    assert "twin =" not in no_twin and load_config(write(tmp_path, no_twin)).twin is None


@pytest.mark.parametrize("twin", ["127.0.0.1:11211", "127.0.0.1"])  # 11211: the default port
def test_a_twin_equal_to_the_store_is_refused(tmp_path: Path, twin: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.twin .* is store\.address"):
        load_config(write(tmp_path, with_twin(twin)))


def test_a_bad_twin_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.twin"):
        load_config(write(tmp_path, with_twin("127.0.0.1:x")))


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


def with_auth_file(tmp_path: Path, content: str | None, mode: int = 0o600) -> Path:
    """VALID plus `[zookeeper] auth_file` pointing at a secret file holding `content`."""
    secret = tmp_path / "zk.secret"
    if content is not None:
        secret.write_text(content)
        secret.chmod(mode)
    return write(tmp_path, VALID.replace("session_timeout = 2", f'auth_file = "{secret}"'))


def test_zookeeper_credentials_are_optional_and_read_from_their_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, VALID)).zookeeper_auth is None
    auth = load_config(with_auth_file(tmp_path, "gearctl:s3cr3t\n")).zookeeper_auth
    assert auth is not None
    assert (auth.user, auth.password) == ("gearctl", "s3cr3t")
    assert "s3cr3t" not in repr(auth)


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (None, 0o600, "cannot read"),
        ("gearctl:s3cr3t\n", 0o640, "lets others read it"),
        ("gearctl:s3cr3t\n", 0o604, "lets others read it"),
        ("gearctl\n", 0o600, "one line `user:password`"),
        (":s3cr3t\n", 0o600, "one line `user:password`"),
        ("gearctl:\n", 0o600, "one line `user:password`"),
        ("gearctl:s3 cr3t\n", 0o600, "one line `user:password`"),
        ("a:b\nc:d\n", 0o600, "one line `user:password`"),
        ("", 0o600, "one line `user:password`"),
    ],
)
def test_bad_credentials_file_is_named(
    tmp_path: Path, content: str | None, mode: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"zookeeper\.auth_file: .*" + message):
        load_config(with_auth_file(tmp_path, content, mode))


def test_credentials_path_must_be_absolute(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("session_timeout = 2", 'auth_file = "zk.secret"'))
    with pytest.raises(ConfigError, match=r"zookeeper\.auth_file .* absolute"):
        load_config(path)


def test_metrics_and_log_format_default_to_off_and_text(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.metrics is None
    assert config.log_format == "text"


def test_metrics_listen_on_gearmand_host_unless_an_address_is_given(tmp_path: Path) -> None:
    extra = '[metrics]\nport = 9400\n[log]\nformat = "json"\n'
    config = load_config(write(tmp_path, VALID + extra))
    assert config.metrics == Endpoint("127.0.0.1", 9400)
    assert config.log_format == "json"
    config = load_config(write(tmp_path, VALID + '[metrics]\nport = 9401\naddress = "10.0.0.5"\n'))
    assert config.metrics == Endpoint("10.0.0.5", 9401)
    assert load_config(write(tmp_path, VALID + "[metrics]\nport = 0\n")).metrics is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[metrics]\nport = 70000\n", "metrics.port = 70000 is outside"),
        ("[metrics]\nport = 9400.5\n", "metrics.port = 9400.5 must be a whole number"),
        ('[metrics]\nport = "9400"\n', "metrics.port must be a number"),
        ('[metrics]\nport = 9400\naddress = "10.0.0.5:9400"\n', "metrics.address must be a host"),
        ("[metrics]\nport = 9400\naddress = 5\n", "metrics.address must be a host"),
        ("[metrics]\nprot = 9400\n", "unknown field metrics.prot"),
        ('[log]\nformat = "xml"\n', "log.format = 'xml': use one of text, json"),
    ],
)
def test_bad_metrics_or_log_field_is_named(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, VALID + section))


def test_spread_take_over_is_on_by_default_and_a_boolean(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, VALID)).takeover_spread is True
    off = load_config(write(tmp_path, VALID + "[takeover]\nspread = false\n"))
    assert off.takeover_spread is False
    with pytest.raises(ConfigError, match=r"takeover\.spread = 'yes': use true or false"):
        load_config(write(tmp_path, VALID + '[takeover]\nspread = "yes"\n'))
    for spread in (False, True):  # what `cluster up --[no-]spread` writes reads back
        text = render_config(node="n1", cluster="c", gearman="h:1", store="h:2",
                             zookeeper="h:3", run_dir=tmp_path, spread=spread)  # fmt: skip
        assert load_config(write(tmp_path, text)).takeover_spread is spread
