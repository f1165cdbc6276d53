"""`gearctl agent check-config`: an agent's configuration with every default filled in, as TOML.

The Ansible role validates its template with it; an operator sees what the agent will really
use (session timeout, watchdog, metrics address) without reading the code's defaults.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from cluster.config import AgentConfig


def effective_toml(config: AgentConfig, path: Path) -> str:
    """The config as TOML (sections as in deploy/agent.example.toml); credentials by path only."""
    raw = tomllib.loads(path.read_text())
    auth_file = raw.get("zookeeper", {}).get("auth_file")
    sections: dict[str, dict[str, object]] = {
        "node": {"name": config.node, "cluster": config.cluster},
        "gearmand": {"listen": str(config.gearman), "threads": config.threads,
                     "expected_queue_depth": config.expected_queue_depth},
        "store": {"address": str(config.store)}
        | ({"twin": str(config.twin)} if config.twin else {}),
        "zookeeper": {"hosts": config.zookeeper_hosts, "session_timeout": config.session_timeout,
                      "safety_margin": config.safety_margin},
        "paths": {"run_dir": str(config.run_dir)},
        "watchdog": {"check_interval": config.check_interval,
                     "check_timeout": config.check_timeout, "hang_checks": config.hang_checks},
        "metrics": {"port": config.metrics_port,
                    "address": config.metrics.host if config.metrics else config.metrics_host},
        "log": {"format": config.log_format},
    }  # fmt: skip
    if auth_file is not None:
        sections["zookeeper"]["auth_file"] = auth_file
    lines = [f"# {path}: valid; every field as the agent will use it"]
    for name, fields in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"
