"""The member record an agent keeps in ZooKeeper while it lives (an ephemeral znode)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Self

from cluster import __version__

# Node states, as `gearctl cluster status` shows them.
STARTING = "starting"
SERVING = "serving"
RESTORING = "restoring"
RESTARTING = "restarting"
FENCED = "fenced"
WAITING = "waiting"  # for the store: a peer owns it (draining it)
FAILED = "failed"
DOWN = "down"


@dataclass(frozen=True)
class MemberRecord:
    node: str
    gearman: str
    store: str
    agent_pid: int
    gearmand_pid: int | None
    state: str
    restarts: int = 0
    version: str = __version__

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a record; unknown keys (from a newer agent) are ignored."""
        raw = json.loads(data.decode())
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        return cls(**known)

    def with_changes(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]
