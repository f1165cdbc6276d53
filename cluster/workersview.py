"""`gearctl workers`: per function, over every live server, jobs queued and running, workers,
and how long the oldest stored job has waited.

Every live server's admin `status` is asked at once, then every live node's store for the ages
of its oldest jobs (cluster.jobage), each with a short timeout; a server or store that does not
answer is named in the output, not waited for.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cluster import target as targets
from cluster.errors import GearctlError
from cluster.jobage import oldest_job_ages
from cluster.probe import PROBE_TIMEOUT, endpoint_or_none, gearmand_status, in_parallel
from cluster.statusview import aligned
from cluster.target import Target

COLUMNS = ("function", "queued", "running", "workers", "oldest")


def function_table(target: Target, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """{"functions": [{function, queued, running, workers, oldest_age_s}], "servers": [...]}."""
    with targets.session(target) as session:
        members = session.members()
    live = sorted((name, m) for name, m in members.items() if m.live)
    statuses = in_parallel(lambda item: gearmand_status(endpoint_or_none(item[1].gearman),
                                                        timeout), live)  # fmt: skip
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"queued": 0, "running": 0,
                                                             "workers": 0})  # fmt: skip
    for functions in statuses:
        for function in functions or []:
            row = totals[function.name]
            row["queued"] += function.queued
            row["running"] += function.running
            row["workers"] += function.workers
    queued = {name for name, row in totals.items() if row["queued"]}

    def ages(item: tuple[str, Any]) -> dict[str, float] | None:
        store = endpoint_or_none(item[1].store)
        if store is None or not queued:
            return {}
        try:
            return oldest_job_ages(store, queued, timeout)
        except GearctlError:
            return None

    store_ages = in_parallel(ages, live)
    oldest: dict[str, float] = {}
    for found in store_ages:
        for name, age in (found or {}).items():
            oldest[name] = max(age, oldest.get(name, 0.0))
    return {
        "functions": [
            {"function": name, **totals[name],
             "oldest_age_s": round(oldest[name]) if name in oldest else None}
            for name in sorted(totals)
        ],
        "servers": [
            {"node": name, "gearman": member.gearman, "answered": status is not None,
             "store_answered": found is not None}
            for (name, member), status, found in zip(live, statuses, store_ages, strict=True)
        ],
    }  # fmt: skip


def render_functions(table: dict[str, Any]) -> str:
    """The table for people, then a line per server or store that did not answer."""
    rows = [COLUMNS] + [
        (row["function"], str(row["queued"]), str(row["running"]), str(row["workers"]),
         "-" if row["oldest_age_s"] is None else f"{row['oldest_age_s']}s")
        for row in table["functions"]
    ]  # fmt: skip
    lines = aligned(rows)
    if not table["functions"]:
        lines.append("(no function: no job queued and no worker registered)")
    for server in table["servers"]:
        if not server["answered"]:
            lines.append(f"gearmand of {server['node']} ({server['gearman']}) did not answer")
        if not server["store_answered"]:
            lines.append(f"the store of {server['node']} did not answer")
    if not table["servers"]:
        lines.append("no live server")
    return "\n".join(lines)
