"""`gearctl agent run` starts the agent without typer's parsing (whose adapters import pydantic,
7 MB of the agent's resident memory); everything else goes through typer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import _plain_agent_run
from cluster.errors import GearctlError

PROBE = """
import sys
sys.argv = ["gearctl", *sys.argv[1:]]
from cluster.cli import gearctl
try:
    gearctl()
except SystemExit:
    pass
print("pydantic" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["store", "inspect"],
        ["agent", "run"],
        ["agent", "run", "--help"],
        ["agent", "run", "--config"],
        ["agent", "run", "--config", "a.toml", "--config", "b.toml"],
        ["agent", "run", "--config", "a.toml", "--log-format", "xml"],
        ["agent", "run", "--config", "a.toml", "--verbose"],
    ],
)
def test_anything_but_a_plain_agent_run_goes_to_typer(argv: list[str]) -> None:
    assert _plain_agent_run(argv) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "run", "--config", "/nonexistent/agent.toml"],
        ["agent", "run", "--config=/nonexistent/agent.toml", "--log-format=json"],
        ["agent", "run", "--log-format", "text", "--config", "/nonexistent/agent.toml"],
    ],
)
def test_a_plain_agent_run_loads_the_config_itself(argv: list[str]) -> None:
    with pytest.raises(GearctlError, match=r"/nonexistent/agent\.toml"):
        _plain_agent_run(argv)


def probe(*argv: str) -> tuple[str, str]:
    """Run `gearctl argv` in a fresh interpreter: (stderr's last line, the rest of stderr)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=60)  # fmt: skip
    *rest, last = done.stderr.strip().splitlines()
    return last, "\n".join(rest)


def test_plain_agent_run_never_imports_pydantic_and_errors_read_as_before() -> None:
    imported, errors = probe("agent", "run", "--config", "/nonexistent/agent.toml")
    assert imported == "False"
    assert "error: /nonexistent/agent.toml" in errors
    imported, errors = probe("agent", "run", "--config", "/nonexistent/agent.toml", "--bad")
    assert imported == "True"  # typer parsed it (and refused the option)
    assert "--bad" in errors
