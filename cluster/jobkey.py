"""gearmand's memcached job keys, `<prefix><function>-<unique>`, parsed back into their parts.

gearmand's libmemcached queue writes each background job under `P<function>-<unique>`. gearctl
gives every gearmand start its own incarnation prefix `g<epoch>_`; gearmand's default prefix
`gear_` is recognised too, as the oldest incarnation (epoch None).

The split rule (one place: `split_function_unique`). The split between function and unique is
ambiguous when either holds '-'. Of the possible splits (at a '-' that leaves the function
non-empty), take, in this order:
1. the one whose unique has the shape of a generated unique (`-<UUID>` at the end: what gearctl's
   Client and libgearman send when the caller gives none), even when a shorter prefix of the name
   is a known function (`mail-bulk-<uuid>` is function `mail-bulk` though only `mail` is known);
2. the one whose function is the longest name the cluster has seen (gearmand's `status`);
3. the only one, when the key has a single '-' (`fn-u`, or `fn-`: an empty unique);
4. none: the key is ambiguous (AmbiguousKeyError) and its job waits until a name decides it.
An empty unique (raw-protocol or Perl clients) is written as `P<function>-`: gearmand keeps only
the last such job per function, and it is restored as the job it is.

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


class AmbiguousKeyError(JobKeyError):
    """A job key that splits into function and unique in several ways and no rule decides it:
    its job waits in the store until a function name seen in the cluster decides it."""


class SplitMethod(StrEnum):
    """Which rule told function and unique apart (see the module docstring)."""

    UUID_UNIQUE = "uuid-unique"
    KNOWN_FUNCTION = "known-function"
    ONLY_DASH = "only-dash"


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
    """The key gearmand writes for a job (an empty unique too: `P<function>-`); JobKeyError if
    memcached could not hold it."""
    if not function:
        raise JobKeyError(f"function {function!r} must be non-empty (unique {unique!r})")
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
    """Split `<function>-<unique>` by the rule of the module docstring.

    AmbiguousKeyError when several splits remain; JobKeyError when there is none, or when the
    text holds a character gearmand never writes into a key (a NUL, which its protocol cannot
    carry; a space, CR or LF, which break its text-protocol `add`): such keys were planted.
    """
    if " " in rest or "\n" in rest or "\r" in rest or "\0" in rest:
        raise JobKeyError(
            f"{rest[:80]!r} holds a space, CR, LF or NUL: gearmand never writes one (and a space "
            "would corrupt its text-protocol `add`)"
        )
    cut = len(rest) - _UUID_TAIL
    if cut > 0 and rest[cut] == "-" and _UUID.fullmatch(rest, cut):
        return KeySplit(rest[:cut], rest[cut + 1 :], SplitMethod.UUID_UNIQUE)
    last = rest.rfind("-", 1)
    if last < 0:
        raise JobKeyError(f"{rest!r} does not have the shape <function>-<unique>")
    cut = last
    while cut > 0:  # the longest known function first
        if rest[:cut] in known_functions:
            return KeySplit(rest[:cut], rest[cut + 1 :], SplitMethod.KNOWN_FUNCTION)
        cut = rest.rfind("-", 1, cut)
    if rest.find("-", 1) == last:
        return KeySplit(rest[:last], rest[last + 1 :], SplitMethod.ONLY_DASH)
    raise AmbiguousKeyError(
        f"{rest!r} splits into function and unique at several '-' and no function name seen in "
        "the cluster decides it"
    )


def parse_job_key(key: str, known_functions: Collection[str] = ()) -> JobKey:
    """Parse a memcached key written by gearmand; JobKeyError (AmbiguousKeyError) if it is not
    a job key (or not yet one whose split is known)."""
    parts = split_prefix(key)
    if parts is None:
        raise JobKeyError(f"key {key!r} has no gearmand prefix (g<epoch>_ or gear_)")
    prefix, rest = parts
    try:
        split = split_function_unique(rest, known_functions)
    except JobKeyError as exc:
        raise type(exc)(f"key {key!r}: {exc}") from None
    return JobKey(key, prefix, prefix_epoch(prefix), split.function, split.unique, split.method)
