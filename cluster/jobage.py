"""How long the oldest stored job of each function has waited, read from a node's store.

gearmand's admin `status` counts jobs but tells no ages. Every background job it accepted sits in
its store under `P<function>-<unique>` until done, and memcached's metadump prints each key's last
access (`la`: the time gearmand wrote it; gearmand never reads it back, and gearctl's own reads
leave it alone). One metadump pass is enough here: an age is a reading, not a restore, and a key
the pass misses only makes the answer a little younger.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from cluster.endpoint import Endpoint
from cluster.jobkey import JobKeyError, parse_job_key
from cluster.store import Store


def oldest_job_ages(
    endpoint: Endpoint, functions: Collection[str], timeout: float, now: float | None = None
) -> dict[str, float]:
    """{function: seconds since its oldest stored job was written}, for `functions` that have
    stored jobs. Raises StoreError when the store does not answer."""
    oldest: dict[str, int] = {}
    for item in Store(endpoint, timeout=timeout).items():
        if item.last_access is None:
            continue
        try:
            function = parse_job_key(item.key, functions).function
        except JobKeyError:
            continue
        if function in functions and item.last_access < oldest.get(function, item.last_access + 1):
            oldest[function] = item.last_access
    now = time.time() if now is None else now
    return {function: max(0.0, now - seen) for function, seen in oldest.items()}
