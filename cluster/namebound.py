"""The bound on function names published to ZooKeeper (issue 14: hostile or careless clients).

Every name gearmand lists in `status` would become a znode forever, and a worker may register
any names it likes (CAN_DO with 100k random names). Names are kept only to split job keys, so
what is published is bounded:
- size: a name longer than MAX_NAME_BYTES never fits a job key (memcached keys are at most 250
  bytes: prefix, name, '-' and unique), so it can never split one;
- count and total size: at most MAX_NAMES names and MAX_TOTAL_BYTES of quoted znode names, which
  keeps one `get_children` answer well below ZooKeeper's 1 MB packet limit (`jute.maxbuffer`);
- rate: at most PER_MINUTE new names per agent and minute (a token bucket), so a burst of
  random names cannot fill the count before real names are seen.
Names left out are counted by reason (`size`, `count`, `rate`) for a metric; a name left out for
`rate` is offered again at the next health check.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from urllib.parse import quote

MAX_NAME_BYTES = 240
MAX_NAMES = 5000
MAX_TOTAL_BYTES = 512 * 1024
PER_MINUTE = 600


def znode_name(name: str) -> str:
    """The child znode name a function name is published under (URL-quoted, no '/')."""
    return quote(name, safe="")


class NameBound:
    """Decides which new function names may be published now."""

    def __init__(
        self,
        *,
        max_names: int = MAX_NAMES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
        per_minute: int = PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_names = max_names
        self.max_total_bytes = max_total_bytes
        self.per_minute = per_minute
        self.clock = clock
        self._tokens = float(per_minute)
        self._filled_at = clock()

    def admit(
        self, new: Iterable[str], published: Collection[str]
    ) -> tuple[list[str], Counter[str]]:
        """Of `new` names (none of them in `published`), those to publish now, and how many were
        left out by reason."""
        new = sorted(new)  # a stable order: the same names win at every check
        if not new:
            return [], Counter()
        names = len(published)
        total = sum(len(znode_name(name)) for name in published)
        now = self.clock()
        self._tokens = min(
            float(self.per_minute), self._tokens + (now - self._filled_at) * self.per_minute / 60
        )
        self._filled_at = now
        admitted: list[str] = []
        left_out: Counter[str] = Counter()
        for name in new:
            size = len(znode_name(name))
            if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                left_out["size"] += 1
            elif names >= self.max_names or total + size > self.max_total_bytes:
                left_out["count"] += 1
            elif self._tokens < 1:
                left_out["rate"] += 1
            else:
                admitted.append(name)
                names += 1
                total += size
                self._tokens -= 1
        return admitted, left_out
