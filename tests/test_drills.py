"""Every failover drill on a real 3-node cluster, 5,000 jobs each, counted one by one."""

from __future__ import annotations

import json

import pytest

from cluster.drill import SCENARIOS, run
from tests.clusterctl import gearctl

pytestmark = pytest.mark.integration

DRILL_JOBS = 5000


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_drill_loses_and_doubles_nothing(scenario: str) -> None:
    result = run(scenario, DRILL_JOBS, print)
    print(result.ledger)
    assert result.ledger.acknowledged == DRILL_JOBS
    assert result.ledger.lost == 0
    assert result.ledger.unexpected == 0
    assert result.ledger.duplicated <= SCENARIOS[scenario].duplicate_bound
    assert result.passed


def test_drill_cli_json_is_a_ledger_and_exit_status_follows_it() -> None:
    result = gearctl("drill", "kill-gearmand", "--jobs", "500", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["scenario"] == "kill-gearmand" and report["passed"] is True
    assert (report["attempted"], report["executed"], report["lost"]) == (500, 500, 0)
    assert report["timeline"][0]["event"] == "cluster of 3 nodes serving"


def test_drill_cli_rejects_unknown_scenario() -> None:
    result = gearctl("drill", "no-such-drill")
    assert result.returncode == 1
    assert "unknown scenario 'no-such-drill'" in result.stderr
