"""`gearctl store inspect`: what a memcached store holds, read-only.

Jobs are counted by function, priority and incarnation prefix (the live gearmand's prefix holds
restored and new jobs; older prefixes hold jobs still waiting for a restore or a drain). The age
of a group's oldest job is how long ago memcached last wrote or read its key (metadump's `la`,
to memcached's one-minute resolution of reads): for a job gearmand stored and nobody read back,
the time since it was stored. gearctl's own reads leave it alone (Store.get_many).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from cluster.endpoint import Endpoint
from cluster.gearman.protocol import Priority
from cluster.jobkey import AmbiguousKeyError, JobKeyError, parse_job_key, split_prefix
from cluster.store import Store


def inspect_store(
    endpoint: Endpoint, known_functions: set[str], live_prefix: str | None = None
) -> dict[str, Any]:
    """A JSON-ready summary of the store at `endpoint` (one snapshot; nothing is changed).

    `live_prefix` is the prefix of the gearmand serving this store now (None: not known); each
    group is then `live` (restored or new jobs) or `waiting` (for a restore or a drain)."""
    store = Store(endpoint)
    items = store.snapshot()
    values = store.get_many([item.key for item in items])
    jobs: Counter[tuple[str, str, str]] = Counter()
    oldest: dict[tuple[str, str, str], int] = {}
    not_jobs: list[str] = []
    for item in items:
        try:
            key = parse_job_key(item.key, known_functions)
            prefix, function = key.prefix, key.function
        except AmbiguousKeyError:
            prefix, function = split_prefix(item.key)[0], "(name not known yet)"  # deferred too
        except JobKeyError:
            not_jobs.append(item.key)
            continue
        flags = values.get(item.key, (b"", 1))[1]
        try:
            priority = Priority.from_flags(flags).value
        except ValueError:
            priority = f"flags {flags}"
        group = (prefix, function, priority)
        jobs[group] += 1
        if item.last_access is not None:
            oldest[group] = min(oldest.get(group, item.last_access), item.last_access)
    now = time.time()
    return {
        "store": str(endpoint),
        "items": store.curr_items(),
        "bytes": store.bytes_used(),
        "jobs": [
            _row(group, count, live_prefix, round(now - oldest[group]) if group in oldest else None)
            for group, count in sorted(jobs.items())
        ],
        "not_jobs": len(not_jobs),
    }


def _row(
    group: tuple[str, str, str], count: int, live_prefix: str | None, oldest_age_s: int | None
) -> dict[str, Any]:
    prefix, function, priority = group
    incarnation = "unknown" if live_prefix is None else "waiting"
    if prefix == live_prefix:
        incarnation = "live"
    return {
        "prefix": prefix,
        "incarnation": incarnation,
        "function": function,
        "priority": priority,
        "count": count,
        "oldest_age_s": oldest_age_s,
    }
