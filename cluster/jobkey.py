"""gearmand's memcached job keys, `<prefix><function>-<unique>`, parsed back into their parts.

gearmand's libmemcached queue writes each background job under `P<function>-<unique>`. gearctl
gives every gearmand start its own incarnation prefix `g<epoch>_`; gearmand's default prefix
`gear_` is recognised too, as the oldest incarnation (epoch None). The split between function and
unique is ambiguous when either holds '-', so it is resolved (design §4) by the longest function
name the cluster has seen, then by the shape of a gearmand-generated unique (a UUID), and only then
at the first '-', which callers should warn about.

Key limits, measured with gearmand 1.1.20 and memcached 1.6.18: memcached keys are at most 250
bytes; gearmand answers QUEUE_ERROR for a longer one and stores nothing. A space in the function or
unique corrupts gearmand's text-protocol `add`: memcached answers an error that gearmand reads as
the reply to its *next* add, so later jobs get wrong acknowledgements. Other control characters
(a tab) are stored as they are; metadump prints them percent-encoded and Store decodes them.
`job_key` refuses keys beyond 250 bytes and keys with spaces or non-printable characters.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from cluster.errors import StoreError

DEFAULT_PREFIX = "gear_"
MAX_KEY_BYTES = 250
_PREFIX = re.compile(r"g(0|[1-9][0-9]{0,17})_|gear_")
_UUID = re.compile(r"-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_TAIL = 37  # '-' and the 36 characters of a UUID


class JobKeyError(StoreError):
    """A memcached key that is not a gearmand job key; callers report it and skip it."""


class SplitMethod(StrEnum):
    """How function and unique were told apart."""

    KNOWN_FUNCTION = "known-function"
    UUID_UNIQUE = "uuid-unique"
    FIRST_DASH = "first-dash"  # a guess: the caller should warn


class KeySplit(NamedTuple):
    function: str
    unique: str
    method: SplitMethod


@dataclass(frozen=True)
class JobKey:
    key: str
    prefix: str
    epoch: int | None  # None for gearmand's default prefix `gear_`, older than every epoch
    function: str
    unique: str
    method: SplitMethod


def incarnation_prefix(epoch: int) -> str:
    """The key prefix of the gearmand started at `epoch` (a non-negative integer)."""
    if epoch < 0:
        raise ValueError(f"incarnation epoch must be >= 0, not {epoch}")
    return f"g{epoch}_"


def prefix_epoch(prefix: str) -> int | None:
    """The epoch of an incarnation prefix (None for `gear_`); JobKeyError for any other text."""
    match = _PREFIX.fullmatch(prefix)
    if match is None:
        raise JobKeyError(f"{prefix!r} is not a gearmand key prefix (g<epoch>_ or gear_)")
    return None if match.group(1) is None else int(match.group(1))


def job_key(prefix: str, function: str, unique: str) -> str:
    """The key gearmand writes for a job; JobKeyError if memcached could not hold it."""
    if not function or not unique:
        raise JobKeyError(f"function {function!r} and unique {unique!r} must both be non-empty")
    key = f"{prefix}{function}-{unique}"
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise JobKeyError(f"key {key[:60]!r}... is longer than memcached's {MAX_KEY_BYTES} bytes")
    if " " in key or not key.isprintable():
        raise JobKeyError(f"key {key!r} holds a space or a non-printable character")
    return key


def split_prefix(key: str) -> tuple[str, str] | None:
    """(prefix, rest) of a job key, or None when the key has no gearmand/gearctl prefix."""
    match = _PREFIX.match(key)
    if match is None:
        return None
    return match.group(0), key[match.end() :]


def split_function_unique(rest: str, known_functions: Collection[str] = ()) -> KeySplit:
    """Split `<function>-<unique>`; JobKeyError when no split leaves both parts non-empty."""
    dashes = [i for i, char in enumerate(rest) if char == "-" and 0 < i < len(rest) - 1]
    for i in reversed(dashes):  # the longest known function first
        if rest[:i] in known_functions:
            return KeySplit(rest[:i], rest[i + 1 :], SplitMethod.KNOWN_FUNCTION)
    if len(rest) > _UUID_TAIL and _UUID.fullmatch(rest, len(rest) - _UUID_TAIL):
        cut = len(rest) - _UUID_TAIL
        return KeySplit(rest[:cut], rest[cut + 1 :], SplitMethod.UUID_UNIQUE)
    if not dashes:
        raise JobKeyError(f"{rest!r} does not have the shape <function>-<unique>")
    return KeySplit(rest[: dashes[0]], rest[dashes[0] + 1 :], SplitMethod.FIRST_DASH)


def parse_job_key(key: str, known_functions: Collection[str] = ()) -> JobKey:
    """Parse a memcached key written by gearmand; JobKeyError if it is not a job key."""
    parts = split_prefix(key)
    if parts is None:
        raise JobKeyError(f"key {key!r} has no gearmand prefix (g<epoch>_ or gear_)")
    prefix, rest = parts
    try:
        split = split_function_unique(rest, known_functions)
    except JobKeyError as exc:
        raise JobKeyError(f"key {key!r}: {exc}") from None
    return JobKey(key, prefix, prefix_epoch(prefix), split.function, split.unique, split.method)
