"""Job keys: prefixes, the function/unique split and its fallbacks, and round trips."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cluster.errors import StoreError
from cluster.jobkey import (
    DEFAULT_PREFIX,
    MAX_KEY_BYTES,
    AmbiguousKeyError,
    JobKey,
    JobKeyError,
    SplitMethod,
    incarnation_prefix,
    job_key,
    parse_job_key,
    prefix_epoch,
    split_function_unique,
    split_prefix,
)

GEARMAND_UUID = "463243be-e9d5-11f1-957c-02fc00000001"


def test_known_function_with_a_dash_is_kept_whole() -> None:
    parsed = parse_job_key("g1_img-resize-u-1", {"img", "img-resize"})
    assert parsed == JobKey(
        "g1_img-resize-u-1", "g1_", 1, "img-resize", "u-1", SplitMethod.KNOWN_FUNCTION
    )


def test_longest_known_function_wins() -> None:
    split = split_function_unique("a-b-c-d", ["a", "a-b", "a-b-c"])
    assert split == ("a-b-c", "d", SplitMethod.KNOWN_FUNCTION)


def test_generated_uuid_unique_splits_an_unknown_function() -> None:
    split = split_function_unique(f"img-resize-{GEARMAND_UUID}", {"other"})
    assert split == ("img-resize", GEARMAND_UUID, SplitMethod.UUID_UNIQUE)


# The split rule's ambiguous cases (cluster.jobkey's docstring): rest, known names, expected split
# (None: ambiguous, the job waits for a name).
SPLIT_CASES = [
    # A generated unique beats a known shorter name: `mail-bulk` is not published yet.
    (f"mail-bulk-{GEARMAND_UUID}", {"mail"}, ("mail-bulk", GEARMAND_UUID, "uuid-unique")),
    (f"mail-bulk-{GEARMAND_UUID}", {"mail-bulk"}, ("mail-bulk", GEARMAND_UUID, "uuid-unique")),
    (f"mail-{GEARMAND_UUID}", set(), ("mail", GEARMAND_UUID, "uuid-unique")),
    # No generated shape: the longest known name.
    ("mail-bulk-u-1", {"mail"}, ("mail", "bulk-u-1", "known-function")),
    ("mail-bulk-u-1", {"mail", "mail-bulk"}, ("mail-bulk", "u-1", "known-function")),
    # One '-' only: no choice to make, also for an empty unique (`fn-`).
    ("mail-u1", set(), ("mail", "u1", "only-dash")),
    ("mail-", set(), ("mail", "", "only-dash")),
    ("mail-bulk-", {"mail-bulk"}, ("mail-bulk", "", "known-function")),
    # Several splits and nothing decides: defer, never guess.
    ("mail-bulk-u1", set(), None),
    ("mail-bulk-", set(), None),
    ("mail-bulk-", {"other"}, None),
    (f"mail-bulk-{GEARMAND_UUID[:-1]}", set(), None),  # one digit short of a UUID
]


@pytest.mark.parametrize(("rest", "known", "expected"), SPLIT_CASES)
def test_split_rule_over_the_ambiguous_cases(
    rest: str, known: set[str], expected: tuple[str, str, str] | None
) -> None:
    if expected is None:
        with pytest.raises(AmbiguousKeyError):
            split_function_unique(rest, known)
    else:
        assert split_function_unique(rest, known) == expected


def test_ambiguous_key_is_a_job_key_error_naming_the_key() -> None:
    with pytest.raises(AmbiguousKeyError, match="g3_img-resize-u-1"):
        parse_job_key("g3_img-resize-u-1")


def test_empty_unique_key_parses_as_the_job_gearmand_kept() -> None:
    parsed = parse_job_key("g4_fn-")
    assert (parsed.function, parsed.unique, parsed.method) == ("fn", "", SplitMethod.ONLY_DASH)
    assert job_key("g4_", "fn", "") == "g4_fn-"


@pytest.mark.parametrize("bad", ["\0", " ", "\r", "\n"])
def test_planted_key_with_what_gearmand_never_writes_is_not_a_job_key(bad: str) -> None:
    with pytest.raises(JobKeyError, match="gearmand never writes one"):
        parse_job_key(f"g1_f-{GEARMAND_UUID}{bad}")
    with pytest.raises(JobKeyError, match="gearmand never writes one"):
        parse_job_key(f"g1_f{bad}x-u", {f"f{bad}x"})


@pytest.mark.parametrize(
    ("key", "prefix", "epoch"),
    [("gear_f-u", DEFAULT_PREFIX, None), ("g12_f-u", "g12_", 12), ("g0_f-u", "g0_", 0)],
)
def test_prefixes(key: str, prefix: str, epoch: int | None) -> None:
    parsed = parse_job_key(key)
    assert (parsed.prefix, parsed.epoch, parsed.function, parsed.unique) == (
        prefix,
        epoch,
        "f",
        "u",
    )


def test_incarnation_prefix_round_trips() -> None:
    assert incarnation_prefix(12) == "g12_"
    assert prefix_epoch(incarnation_prefix(12)) == 12
    assert split_prefix("g12_f-u") == ("g12_", "f-u")
    with pytest.raises(ValueError):
        incarnation_prefix(-1)


@pytest.mark.parametrize(
    "key",
    ["", "x", "g_f-u", "gx_f-u", "g01_f-u", "G1_f-u", "g1_", "g1_f", "g1_-", "gear_-u"],
)
def test_keys_that_are_not_job_keys_raise_job_key_error(key: str) -> None:
    with pytest.raises(JobKeyError):
        parse_job_key(key, {"f"})


def test_job_key_error_is_a_store_error() -> None:
    assert issubclass(JobKeyError, StoreError)


@pytest.mark.parametrize(
    ("function", "unique"),
    [("", "u"), ("", ""), ("a b", "u"), ("f", "tab\tu"), ("f" * MAX_KEY_BYTES, "u")],
)
def test_job_key_refuses_keys_memcached_cannot_hold(function: str, unique: str) -> None:
    with pytest.raises(JobKeyError):
        job_key("g1_", function, unique)


def test_job_key_accepts_exactly_250_bytes() -> None:
    key = job_key("g1_", "f" * (MAX_KEY_BYTES - 5), "u")
    assert len(key) == MAX_KEY_BYTES


# Printable characters, no space; '-' is common so that splits are really ambiguous.
NAME_CHARS = st.one_of(st.just("-"), st.characters(min_codepoint=33, max_codepoint=0x2FF))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=40)
PREFIXES = st.one_of(st.just(DEFAULT_PREFIX), st.integers(0, 10**6).map(incarnation_prefix))


def valid_key(prefix: str, function: str, unique: str) -> str:
    try:
        return job_key(prefix, function, unique)
    except JobKeyError:
        assume(False)
        raise


@given(PREFIXES, NAMES, NAMES, st.lists(NAMES, max_size=5))
def test_known_function_round_trips(
    prefix: str, function: str, unique: str, others: list[str]
) -> None:
    # Another known function that is `function-<start of unique>` would be a real ambiguity.
    assume(not any(o.startswith(function + "-") for o in others))
    key = valid_key(prefix, function, unique)
    parsed = parse_job_key(key, {function, *others})
    assert (parsed.prefix, parsed.function, parsed.unique) == (prefix, function, unique)
    assert parsed.method == SplitMethod.KNOWN_FUNCTION
    assert job_key(parsed.prefix, parsed.function, parsed.unique) == key


@given(PREFIXES, NAMES, st.uuids(), st.booleans())
def test_uuid_unique_round_trips_without_known_functions(
    prefix: str, function: str, generated: uuid.UUID, upper: bool
) -> None:
    unique = str(generated).upper() if upper else str(generated)
    key = valid_key(prefix, function, unique)
    parsed = parse_job_key(key, ())
    assert (parsed.function, parsed.unique) == (function, unique)
    assert parsed.method == SplitMethod.UUID_UNIQUE


@given(st.text(max_size=300), st.lists(st.text(max_size=20), max_size=5))
def test_arbitrary_text_raises_only_job_key_error(key: str, known: list[str]) -> None:
    try:
        parsed = parse_job_key(key, known)
    except JobKeyError:
        return
    assert parsed.key == key
    assert parsed.prefix + parsed.function + "-" + parsed.unique == key
    assert parsed.function


@given(st.text(st.sampled_from("g01_ear-x"), max_size=30))
def test_prefix_like_text_raises_only_job_key_error(key: str) -> None:
    try:
        parsed = parse_job_key(key, ["x", "ear", "g1"])
    except JobKeyError:
        return
    assert parsed.epoch is None or parsed.prefix == incarnation_prefix(parsed.epoch)
