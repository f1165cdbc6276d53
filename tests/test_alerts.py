"""deploy/gearctl-alerts.yml loads in Prometheus (promtool) and fires as its unit tests expect."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.metrics import AgentMetrics
from tests.test_metrics import exposed_names, nowhere

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "gearctl-alerts.yml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian's `prometheus`; scripts/bootstrap.sh installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=DEPLOY)  # fmt: skip


@needs_promtool
def test_rules_load() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", "gearctl-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_queries_only_exposed_metrics() -> None:
    rules = RULES.read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", rules, re.MULTILINE))
    tested = re.findall(r"alertname: (\w+)$", (DEPLOY / "gearctl-alerts.test.yml").read_text(),
                        re.MULTILINE)  # fmt: skip
    assert len(alerts) >= 10
    assert alerts <= set(tested)
    used = set(re.findall(r"\bgearctl_[a-z_]+", rules))  # every such word is a metric name
    available = exposed_names(AgentMetrics("n1", nowhere(), (nowhere(),), timeout=0.2))
    assert used <= available, f"unknown metrics: {sorted(used - available)}"
