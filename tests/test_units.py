"""The systemd units in deploy/: `systemd-analyze verify` accepts each, and
`systemd-analyze security --offline=true` rates each at exposure 3.0 or below.

Runs without systemd as PID 1: verify works on a scratch root holding systemd's own units, the
units under test and a stand-in for each program they start (verify checks that ExecStart names
an executable). Skipped only where systemd-analyze is not installed (scripts/bootstrap.sh
installs it: Debian's `systemd` package).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted(p.name for p in DEPLOY.glob("*.service"))
MAX_EXPOSURE = 3.0
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def executables(unit: Path) -> list[str]:
    """The programs the unit's ExecStart lines start (absolute paths)."""
    found = re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", unit.read_text(), flags=re.MULTILINE)
    assert found, f"{unit.name} starts nothing"
    return found


def instance(name: str) -> str:
    """verify needs an instance of a template unit."""
    return name.replace("@.", "@node1.")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(DEPLOY / name, units / name)
        for program in executables(DEPLOY / name):
            stand_in = root / program.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("#!/bin/sh\n")
            stand_in.chmod(0o755)
    return root


def test_every_unit_is_found() -> None:
    assert {"gearctl-agent.service", "gearctl-memcached@.service"} <= set(UNITS)
    assert "gearctl-zookeeper.service" in UNITS


@pytest.mark.parametrize("name", UNITS)
def test_verify_passes(root: Path, name: str) -> None:
    result = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", instance(name)],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    # verify reports unknown keys and bad values as lines of output, not always as an exit code
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure(name: str) -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
