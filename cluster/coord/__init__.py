"""The coordination layer: every znode of a cluster, its path, its typed record, its reads and
writes. Only this package and cluster.zkclient (which builds the clients) import kazoo."""

from cluster.coord.coordination import Coordination, SessionState, connect, session
from cluster.coord.errors import (
    CoordinationError,
    CoordinationRefused,
    CoordinationTimeout,
    PlanEnded,
)
from cluster.coord.lease import StoreLease
from cluster.coord.members import MemberFollower
from cluster.coord.paths import ClusterPaths
from cluster.coord.records import (
    AGENT_STATES,
    LIVE_STATES,
    MemberEntry,
    MemberRecord,
    NodeState,
    Outcome,
    Owner,
    PartRecord,
    PartSummary,
    PauseRecord,
    Purpose,
    SpreadPlan,
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
    "CoordinationTimeout",
    "MemberEntry",
    "MemberFollower",
    "MemberRecord",
    "NodeState",
    "Outcome",
    "Owner",
    "PartRecord",
    "PartSummary",
    "PauseRecord",
    "PlanEnded",
    "Purpose",
    "SessionState",
    "SpreadPlan",
    "StoreLease",
    "StoreRecord",
    "TakeoverRecord",
    "connect",
    "session",
    "session_text",
]
