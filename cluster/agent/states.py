"""The agent's states and the transitions its diagram has (docs/architecture.md draws it).

Some states are steps the member record never shows (owning, counting, launching,
recovering): `PUBLISHED` maps each state to what `gearctl cluster status` shows, None for
those. `fenced` is shown by metrics and logs only: a fenced agent may have no session to
write with.
"""

from __future__ import annotations

import enum

from cluster.coord import NodeState


class State(enum.Enum):
    STARTING = "starting"  # register the member record (again after a lost session)
    OWNING = "owning"  # take the store's lease
    WAITING = "waiting"  # a peer holds the lease (drains the store): wait for it
    COUNTING = "counting"  # count the store's jobs while no gearmand runs (quiescent)
    STORE_UNREACHABLE = "store-unreachable"  # the count failed: retry after a second
    LAUNCHING = "launching"  # start gearmand with a fresh key prefix g<epoch>_
    RESTORING = "restoring"  # move the jobs of older prefixes into it (a pending twin's too)
    SERVING = "serving"  # health checks; deferred jobs retried
    STORE_LOST = "store-lost"  # gearmand runs on, its store does not answer
    RESTARTING = "restarting"  # gearmand died or hung: backoff
    FAILED = "failed"  # gearmand does not start, or a crash loop: retried after a pause
    RECOVERING = "recovering"  # ZooKeeper or the store failed a step: from a stopped gearmand
    FENCED = "fenced"  # our session may be lost: gearmand killed, wait for the session
    STOPPED = "stopped"  # SIGTERM/SIGINT: final


PUBLISHED: dict[State, NodeState | None] = {
    State.STARTING: NodeState.STARTING,
    State.OWNING: None,
    State.WAITING: NodeState.WAITING,
    State.COUNTING: None,
    State.STORE_UNREACHABLE: NodeState.STORE_LOST,
    State.LAUNCHING: None,
    State.RESTORING: NodeState.RESTORING,
    State.SERVING: NodeState.SERVING,
    State.STORE_LOST: NodeState.STORE_LOST,
    State.RESTARTING: NodeState.RESTARTING,
    State.FAILED: NodeState.FAILED,
    State.RECOVERING: None,
    State.FENCED: NodeState.FENCED,
    State.STOPPED: None,
}

# Every state but the last may be fenced or stopped. RECOVERING follows a step whose ZooKeeper
# or store request failed (the steps that make such requests without handling their failure).
_ANY = {State.FENCED, State.STOPPED}
_FALLIBLE = _ANY | {State.RECOVERING}

TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.OWNING} | _ANY),
    State.OWNING: frozenset({State.COUNTING, State.WAITING} | _FALLIBLE),
    State.WAITING: frozenset({State.COUNTING} | _FALLIBLE),
    State.COUNTING: frozenset({State.LAUNCHING, State.STORE_UNREACHABLE} | _ANY),
    State.STORE_UNREACHABLE: frozenset({State.OWNING} | _ANY),
    State.LAUNCHING: frozenset({State.RESTORING, State.FAILED} | _FALLIBLE),
    State.RESTORING: frozenset({State.SERVING, State.RESTARTING} | _FALLIBLE),
    State.SERVING: frozenset({State.STORE_LOST, State.RESTARTING, State.RESTORING} | _FALLIBLE),
    State.STORE_LOST: frozenset({State.SERVING, State.RESTARTING} | _FALLIBLE),
    State.RESTARTING: frozenset({State.OWNING, State.FAILED} | _ANY),
    State.FAILED: frozenset({State.OWNING} | _ANY),
    State.RECOVERING: frozenset({State.OWNING} | _ANY),
    State.FENCED: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A step asked for a transition the diagram does not have: a bug, so the agent stops
    (and stops its gearmand) rather than carrying on in a state nobody reasoned about."""


def check_transition(current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"agent: no transition {current.value} -> {target.value}")
