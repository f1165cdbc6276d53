"""Parsing `host:port` addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.endpoint import Endpoint
from cluster.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", Endpoint("h", 1)), ("10.0.0.1:4730", Endpoint("10.0.0.1", 4730)), ("h", None)],
)
def test_endpoint_parse(text: str, expected: Endpoint | None) -> None:
    if expected is None:
        assert Endpoint.parse(text, default_port=7) == Endpoint("h", 7)
        with pytest.raises(ConfigError, match="no port"):
            Endpoint.parse(text)
    else:
        assert Endpoint.parse(text) == expected


@given(st.text(max_size=30))
def test_endpoint_parse_never_fails_unexpectedly(text: str) -> None:
    try:
        endpoint = Endpoint.parse(text)
    except ConfigError:
        return
    assert 0 < endpoint.port < 65536
