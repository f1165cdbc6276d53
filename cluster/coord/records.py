"""The records gearctl keeps in ZooKeeper, typed; their JSON is a contract (status --json, peers).

Every record decodes what an older or newer agent wrote: unknown keys are ignored, missing
optional ones get their default. Nothing here talks to ZooKeeper (see cluster.coord.coordination).
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

from cluster import __version__
from cluster.process import boot_id, pid_namespace


class NodeState(enum.StrEnum):
    """A node's state, as its member record and `gearctl cluster status` show it."""

    STARTING = "starting"
    WAITING = "waiting"  # for the store: a peer owns it (draining it)
    RESTORING = "restoring"
    SERVING = "serving"
    RESTARTING = "restarting"
    FENCED = "fenced"
    FAILED = "failed"
    STORE_LOST = "store-lost"  # gearmand runs on, its store does not answer
    DOWN = "down"  # only in the local status: the agent process is not running


AGENT_STATES = tuple(state for state in NodeState if state is not NodeState.DOWN)
"""The states an agent writes into its member record."""

LIVE_STATES = frozenset({NodeState.SERVING, NodeState.RESTORING})
"""Member states whose gearmand accepts jobs (a restoring gearmand already serves new ones)."""


def _known_fields(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    return {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}


@dataclass(frozen=True)
class MemberRecord:
    """`members/<node>`: the live agent's record (ephemeral: it ends with the agent's session)."""

    node: str
    gearman: str
    store: str
    agent_pid: int
    gearmand_pid: int | None
    state: str  # a NodeState value (kept a str: a newer agent may write one we do not know)
    restarts: int = 0
    deferred_jobs: int = 0  # stored jobs waiting until their function name is known
    refused_jobs: int = 0  # stored jobs every gearmand refused twice (a full store): they wait
    # Does the agent drain parts of spread drains (`[takeover] spread`)? A plan ranks only those.
    # A record without the field (an agent older than it) counts as not draining parts: such an
    # agent may still help with the parts left free, but is never given one of its own.
    drains_parts: bool = False
    version: str = __version__

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a record; unknown keys (from a newer agent) are ignored."""
        return cls(**_known_fields(cls, json.loads(data.decode())))

    def with_changes(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def live(self) -> bool:
        """Does its gearmand accept jobs?"""
        return self.state in LIVE_STATES


@dataclass(frozen=True)
class MemberEntry:
    """A member record with the ZooKeeper session that holds it (its znode's ephemeralOwner)."""

    record: MemberRecord
    session: int
    registered: float  # when the session created the record (znode ctime), epoch seconds


def session_text(session: int) -> str:
    """A ZooKeeper session id as ZooKeeper's own logs print it (0x...)."""
    return f"{session:#x}"


@dataclass(frozen=True)
class StoreRecord:
    """`stores/<node>`: what peers need to take the store over; written by its owner at each
    start of gearmand.

    `boot_id` (the kernel's) and `pid_namespace` (inode) say where `gearmand_pid` means
    something: only a peer with both equal may look the PID up. `host` is for people only:
    hostnames repeat across containers and cloned machines.

    `address` is the memcached the current gearmand writes; `twin` the node's other store when
    it has twin stores (docs/architecture.md, "Serving at once"): a drain reads both. `pending`:
    the twin that did not answer at gearmand's start (or at a take-over), whose jobs wait to be
    restored (drained) once it answers; `pending_since` (wall clock): since when it is silent."""

    address: str
    gearman: str
    host: str
    gearmand_pid: int | None
    boot_id: str | None = None
    pid_namespace: int | None = None
    twin: str | None = None
    pending: str | None = None
    pending_since: float | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every store of the node: the one gearmand writes first, then its twin if any."""
        return (self.address,) if self.twin is None else (self.address, self.twin)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoreRecord:
        """ValueError or KeyError when the store was never described (empty or foreign data)."""
        raw = json.loads(data.decode())
        return cls(raw["address"], raw["gearman"], raw["host"], raw.get("gearmand_pid"),
                   raw.get("boot_id"), raw.get("pid_namespace"), raw.get("twin"),
                   raw.get("pending"), raw.get("pending_since"))  # fmt: skip

    @classmethod
    def here(
        cls, address: str, gearman: str, gearmand_pid: int, twin: str | None = None
    ) -> StoreRecord:
        """The record of a gearmand this process started (writing `address`)."""
        return cls(address, gearman, socket.gethostname(), gearmand_pid, boot_id(),
                   pid_namespace(), twin)  # fmt: skip

    def with_pending(self, pending: str | None, since: float | None = None) -> StoreRecord:
        """The record with `pending` (None: no twin waits) silent since `since`."""
        return replace(self, pending=pending, pending_since=since if pending else None)

    def same_pid_table(self) -> bool:
        """Is `gearmand_pid` a PID of this kernel and PID namespace?"""
        mine = (boot_id(), pid_namespace())
        return None not in mine and (self.boot_id, self.pid_namespace) == mine


class Purpose(enum.StrEnum):
    """Why a session owns a store."""

    SERVE = "serve"  # the store's own agent serves it
    DRAIN = "drain"  # a survivor or `gearctl store drain` drains it


@dataclass(frozen=True)
class Owner:
    """`stores/<node>/owner`: who serves or drains the store. The znode is ephemeral and its
    `ephemeralOwner` (the session) decides whose it is, never the data in it."""

    node: str
    purpose: str  # a Purpose value, or "?" when the data is unreadable
    session: int

    def encode(self) -> bytes:
        record = {
            "node": self.node,
            "purpose": self.purpose,
            "session": session_text(self.session),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
        }
        return json.dumps(record).encode()

    @classmethod
    def decode(cls, data: bytes, session: int) -> Owner:
        raw = json.loads(data.decode() or "{}")
        return cls(
            node=str(raw.get("node", "?")), purpose=str(raw.get("purpose", "?")), session=session
        )


class Outcome(enum.StrEnum):
    """How a take-over (or manual drain) ended, or that it still runs."""

    RUNNING = "running"
    DONE = "done"
    INTERRUPTED = "interrupted"
    REFUSED = "refused"  # not taken over: its old gearmand still answered (fencing failed)


@dataclass(frozen=True)
class PartSummary:
    """One part of a spread take-over, as its take-over record keeps it: who drained it (in
    turn), the jobs moved out of the node's stores, and whether it is done."""

    part: int
    drainers: tuple[str, ...]
    jobs: int
    done: bool

    def as_json(self) -> dict[str, Any]:
        return {"part": self.part, "drainers": list(self.drainers), "jobs": self.jobs,
                "done": self.done}  # fmt: skip

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> PartSummary:
        return cls(int(raw["part"]), tuple(raw.get("drainers", ())), int(raw.get("jobs", 0)),
                   bool(raw.get("done", False)))  # fmt: skip


@dataclass
class TakeoverRecord:
    """`takeovers/t-<seq>`: one take-over of a dead node's store, or a manual drain.

    On the wire `outcome` is one string: `running`, `done`, `done; <reason>` (jobs left for
    later), `interrupted: <reason>` or `refused: <reason>`.
    """

    store: str
    by: str
    started: float
    finished: float | None = None
    jobs: int = 0
    seconds: float = 0.0
    outcome: Outcome = Outcome.RUNNING
    reason: str = ""
    manual: bool = False  # `gearctl store drain`, not a survivor's automatic take-over
    pending: str | None = None  # a twin that did not answer: the next take-over drains it
    parts: tuple[PartSummary, ...] = ()  # a spread take-over's parts (its claimer writes them)

    @property
    def done(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def outcome_text(self) -> str:
        if not self.reason:
            return self.outcome.value
        separator = ";" if self.outcome is Outcome.DONE else ":"
        return f"{self.outcome.value}{separator} {self.reason}"

    def finish(self, outcome: Outcome, jobs: int, reason: str = "") -> None:
        self.outcome, self.jobs, self.reason = outcome, jobs, reason
        self.finished = time.time()
        self.seconds = self.finished - self.started

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "by": self.by,
            "started": self.started,
            "finished": self.finished,
            "jobs": self.jobs,
            "seconds": self.seconds,
            "outcome": self.outcome_text,
            "manual": self.manual,
            "pending": self.pending,
            "parts": [part.as_json() for part in self.parts],
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_json()).encode()

    @classmethod
    def decode(cls, data: bytes) -> TakeoverRecord:
        raw = json.loads(data.decode())
        text = str(raw.pop("outcome", Outcome.RUNNING.value))
        head, _, reason = text.partition(";" if text.startswith(Outcome.DONE) else ":")
        parts = tuple(PartSummary.decode(part) for part in raw.pop("parts", ()))
        record = cls(**_known_fields(cls, raw))
        record.outcome, record.reason = Outcome(head.strip()), reason.strip()
        record.parts = parts
        return record


@dataclass(frozen=True)
class SpreadPlan:
    """`stores/<node>/spread`: how a dead node's jobs are split among the survivors (issue 18,
    cluster/spread.py), written by the claimer in two steps: without counts (every survivor lists
    the quiescent stores meanwhile, as the claimer does), then with them; kept by every later
    claimer of the same incarnation (which counts it if its claimer stopped before that).
    `counts[s][i]`: jobs of part i in `stores[s]` (the node's stores in drain order), counted
    while the stores were quiescent; empty until then. `survivors[i]` drains part i first."""

    survivors: tuple[str, ...]
    stores: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    epoch: int | None  # the store's incarnation when planned: a plan of another one is stale
    takeover: str  # the path of the take-over record the plan's claimers finish
    started: float

    @property
    def parts(self) -> int:
        return len(self.survivors)

    @property
    def counted(self) -> bool:
        """Step two is written: parts may be drained."""
        return bool(self.counts)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> SpreadPlan:
        raw = json.loads(data.decode())
        return cls(tuple(raw["survivors"]), tuple(raw["stores"]),
                   tuple(tuple(int(n) for n in c) for c in raw["counts"]), raw.get("epoch"),
                   str(raw["takeover"]), float(raw["started"]))  # fmt: skip


@dataclass(frozen=True)
class PartRecord:
    """`stores/<node>/parts/<i>`: part i's progress, written by its drainers under its lease.
    `moved[s]`: jobs of the part moved out of store s so far (by every drainer of the part, each
    counting a job once its key is deleted); `done`: the part's every listed job is moved."""

    moved: tuple[int, ...]
    done: bool = False
    drainers: tuple[str, ...] = ()  # who drained it, in turn (more than one: it was resumed)

    def summary(self, index: int) -> PartSummary:
        """What the take-over record keeps of part `index`."""
        return PartSummary(index, self.drainers, sum(self.moved), self.done)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> PartRecord:
        raw = json.loads(data.decode())
        return cls(tuple(int(n) for n in raw["moved"]), bool(raw.get("done", False)),
                   tuple(raw.get("drainers", ())))  # fmt: skip


@dataclass(frozen=True)
class PauseRecord:
    """`takeover-paused`: automatic take-over is paused (`gearctl takeover pause`)."""

    since: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)

    def encode(self) -> bytes:
        return json.dumps({"since": self.since, "host": self.host}).encode()
