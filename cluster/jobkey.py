"""gearmand's memcached job keys: `<prefix><function>-<unique>`, parsed back into their parts.

gearmand's libmemcached queue writes each background job under `P<function>-<unique>`. gearctl
gives every gearmand start its own prefix `g<epoch>_`; gearmand's default prefix is `gear_`.
The split between function and unique is ambiguous when either holds '-', so it is resolved
(design §4) by the function names the cluster has seen, then by the shape of a gearmand/libgearman
generated unique (a UUID), and only then at the first '-', which the caller should warn about.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from cluster.errors import StoreError

DEFAULT_PREFIX = "gear_"
PREFIX_PATTERN = re.compile(r"^(g(\d+)_|gear_)")
UUID_SUFFIX = re.compile(
    r"-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)

KNOWN = "known-function"
UUID = "uuid-unique"
FIRST_DASH = "first-dash"


class JobKeyError(StoreError):
    """A memcached key that is not a gearmand job key; callers report it and skip it."""


@dataclass(frozen=True)
class JobKey:
    key: str
    prefix: str
    epoch: int | None  # None for gearmand's default prefix `gear_`
    function: str
    unique: str
    method: str  # how function and unique were split: KNOWN, UUID or FIRST_DASH


def incarnation_prefix(epoch: int) -> str:
    return f"g{epoch}_"


def job_key(prefix: str, function: str, unique: str) -> str:
    return f"{prefix}{function}-{unique}"


def split_prefix(key: str) -> tuple[str, str] | None:
    """(prefix, rest) of a job key, or None when the key has no gearmand/gearctl prefix."""
    match = PREFIX_PATTERN.match(key)
    if match is None:
        return None
    return match.group(1), key[match.end() :]


def split_function_unique(rest: str, known_functions: Collection[str]) -> tuple[str, str, str]:
    """Split `<function>-<unique>` into (function, unique, method); JobKeyError if no '-'."""
    best = max((f for f in known_functions if rest.startswith(f + "-")), key=len, default=None)
    if best is not None:
        return best, rest[len(best) + 1 :], KNOWN
    match = UUID_SUFFIX.search(rest)
    if match is not None and match.start() > 0:
        return rest[: match.start()], match.group(1), UUID
    function, sep, unique = rest.partition("-")
    if not sep or not function:
        raise JobKeyError(f"{rest!r} has no '<function>-<unique>' shape")
    return function, unique, FIRST_DASH


def parse_job_key(key: str, known_functions: Collection[str] = ()) -> JobKey:
    parts = split_prefix(key)
    if parts is None:
        raise JobKeyError(f"key {key!r} has no gearmand prefix (g<epoch>_ or gear_)")
    prefix, rest = parts
    function, unique, method = split_function_unique(rest, known_functions)
    match = PREFIX_PATTERN.match(prefix)
    epoch = int(match.group(2)) if match and match.group(2) else None
    return JobKey(key, prefix, epoch, function, unique, method)
