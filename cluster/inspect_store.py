"""`gearctl store inspect`: what a memcached store holds, read-only.

Jobs are counted by function, priority and incarnation prefix (the live gearmand's prefix holds
restored and new jobs; older prefixes hold jobs still waiting for a restore or a drain).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cluster.endpoint import Endpoint
from cluster.jobkey import JobKeyError, SplitMethod, parse_job_key
from cluster.protocol import Priority
from cluster.store import Store


def inspect_store(endpoint: Endpoint, known_functions: set[str]) -> dict[str, Any]:
    """A JSON-ready summary of the store at `endpoint` (one snapshot; nothing is changed)."""
    store = Store(endpoint)
    items = store.snapshot()
    values = store.get_many([item.key for item in items])
    jobs: Counter[tuple[str, str, str]] = Counter()
    not_jobs: list[str] = []
    for item in items:
        try:
            key = parse_job_key(item.key, known_functions)
        except JobKeyError:
            not_jobs.append(item.key)
            continue
        function = key.function
        if key.method == SplitMethod.FIRST_DASH and "-" in key.function + key.unique:
            function = "(name not known yet)"  # the restore defers these too
        flags = values.get(item.key, (b"", 1))[1]
        try:
            priority = Priority.from_flags(flags).value
        except ValueError:
            priority = f"flags {flags}"
        jobs[(key.prefix, function, priority)] += 1
    return {
        "store": str(endpoint),
        "items": store.curr_items(),
        "bytes": store.bytes_used(),
        "jobs": [
            {"prefix": prefix, "function": function, "priority": priority, "count": count}
            for (prefix, function, priority), count in sorted(jobs.items())
        ],
        "not_jobs": len(not_jobs),
    }
