"""The coordination layer: every znode of a cluster, its path, its typed record, its reads and
writes. Only this package and cluster.zkclient (which builds the clients) import kazoo."""

from cluster.coord.coordination import (
    Coordination,
    CoordinationError,
    CoordinationRefused,
    MemberFollower,
    SessionState,
    StoreLease,
    connect,
    session,
)
from cluster.coord.paths import ClusterPaths
from cluster.coord.records import (
    AGENT_STATES,
    LIVE_STATES,
    MemberEntry,
    MemberRecord,
    NodeState,
    Outcome,
    Owner,
    PauseRecord,
    Purpose,
    StoreRecord,
    TakeoverRecord,
    session_text,
)

__all__ = [
    "AGENT_STATES",
    "LIVE_STATES",
    "ClusterPaths",
    "Coordination",
    "CoordinationError",
    "CoordinationRefused",
    "MemberEntry",
    "MemberFollower",
    "MemberRecord",
    "NodeState",
    "Outcome",
    "Owner",
    "PauseRecord",
    "Purpose",
    "SessionState",
    "StoreLease",
    "StoreRecord",
    "TakeoverRecord",
    "connect",
    "session",
    "session_text",
]
