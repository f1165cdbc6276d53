"""`gearctl cluster status` for people: the table, and `--watch` on one ZooKeeper session."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.clusterstatus import collect, degraded
from cluster.coord import Coordination
from cluster.target import open_session

if TYPE_CHECKING:
    from cluster.target import Target

CLEAR_SCREEN = "\x1b[H\x1b[2J"
FIRST_CONNECT_WAIT = 2.0  # seconds --watch waits for ZooKeeper before its first table
HEADER = ("node", "state", "gearman", "store", "queued", "items", "store owner", "restarts",
          "last restart", "zookeeper session")  # fmt: skip


def render(status: dict[str, Any], now: float | None = None) -> str:
    """The status as text: a line on ZooKeeper, one row per node, then the take-overs."""
    now = time.time() if now is None else now
    zookeeper = status["zookeeper"]
    modes = ", ".join(f"{m['address']} {m['mode'] or 'down'}" for m in zookeeper["members"])
    lines = [
        f"cluster {status['cluster']}  zookeeper {zookeeper['address']}"
        f" ({'reachable' if zookeeper['reachable'] else 'UNREACHABLE'}; {modes})"
    ]
    if status.get("takeover_paused"):
        lines.append("automatic take-over is PAUSED (gearctl takeover resume)")

    owners = {store["store"]: store["owner"] for store in status["stores"]}
    rows = [HEADER] + [
        (n["name"], n["state"], _text(n["gearman"]), _stores(n, "store", "twin"),
         _text(n["queued_jobs"]), _stores(n, "store_items", "twin_items"),
         _owner(n["name"], owners.get(n["name"])), str(n["restarts"]),
         _age(n.get("gearmand_started"), now), _session(n))
        for n in status["nodes"]
    ]  # fmt: skip
    lines += aligned(rows)
    lines += [takeover_line(takeover, now) for takeover in status["takeovers"]]
    reasons = degraded(status)
    lines.append(f"DEGRADED: {'; '.join(reasons)}" if reasons else "every node serving")
    return "\n".join(lines)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def takeover_line(takeover: dict[str, Any], now: float | None = None) -> str:
    """One take-over (or manual drain) of the history, for people; a spread one has a line per
    part below it."""
    how = "manual drain" if takeover.get("manual") else "take-over"
    head = f"{how} of store {takeover['store']} by {takeover['by']}"
    if takeover["outcome"] == "running":
        line = f"{head}: running, started {_age(takeover['started'], now or time.time())}"
    else:
        ended = f"{takeover['outcome']}, {takeover['jobs']} jobs in {takeover['seconds']:.2f}s"
        pending = f", twin {takeover['pending']} pending" if takeover.get("pending") else ""
        line = f"{head}: {ended}{pending}"
    return "\n".join([line, *map(_part_line, takeover.get("parts", ()))])


def _part_line(part: dict[str, Any]) -> str:
    drainers = " then ".join(part["drainers"]) or "nobody yet"
    state = "done" if part["done"] else "not done"
    return f"  part {part['part']}: {drainers}, {part['jobs']} jobs, {state}"


def watch(
    target: Target,
    interval: float,
    show: Callable[[dict[str, Any]], None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Collect the status every `interval` seconds and `show` it, until KeyboardInterrupt.

    One ZooKeeper client serves every refresh; kazoo reconnects it (with a new session if the
    old one expired) while ZooKeeper is away, and the table says UNREACHABLE meanwhile (a
    cluster that is not local must answer the first time: GearctlError otherwise).
    """
    if target.local is not None:  # shown also while its ZooKeeper is down
        session = Coordination.new(target.zookeeper, target.local.cluster, session_timeout=4.0)
        session.start_in_background(FIRST_CONNECT_WAIT)
    else:
        session = open_session(target, FIRST_CONNECT_WAIT)
    try:
        while True:
            show(collect(target, session))
            sleep(interval)
    finally:
        session.close()


def as_json_line(status: dict[str, Any]) -> str:
    return json.dumps(status, separators=(",", ":"))


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _stores(node: dict[str, Any], store: str, twin: str) -> str:
    """The node's store's cell, `store+twin` when it has twin stores (`twin` is set); a pending
    twin's address is marked `(pending)`."""
    if node.get("twin") is None:
        return _text(node[store])
    cells = [_text(node[store]), _text(node.get(twin))]
    if node.get("pending") in cells:
        cells[cells.index(node["pending"])] += " (pending)"
    return "+".join(cells)


def _owner(node: str, owner: dict[str, str] | None) -> str:
    if owner is None:
        return "nobody"
    return owner["node"] if owner["node"] == node else f"{owner['node']} ({owner['purpose']})"


def _session(node: dict[str, Any]) -> str:
    session = node.get("zk_session")
    return "-" if session is None else f"{session} {node.get('zk_session_state')}"


def _age(started: float | None, now: float) -> str:
    if started is None:
        return "-"
    seconds = max(0.0, now - started)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"
