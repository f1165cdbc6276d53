"""One memcached store, as gearmand's libmemcached queue writes it.

Single-key get/set/delete and `version` go through pymemcache (flags carry the job's priority).
The rest goes over a raw text-protocol socket, because pymemcache has no call for it or loses
something: `lru_crawler metadump all` (keys with their `cas`, memcached's store order), `stats`
(exact strings), and pipelined meta commands for bulk reads and deletes. Meta commands carry a key
as it is, or base64-encoded when it holds whitespace or control bytes (a tab), so any key memcached
holds can be read and deleted (memcached checks its 250-byte limit on the key as sent: base64
alone would lose every key above 187 bytes).

Keys are `str`; bytes that are not UTF-8 are kept as surrogate escapes (`surrogateescape`), so a
key read from metadump goes back to memcached byte for byte. Every socket has a connect and a read
timeout. A Store is not thread-safe: give each thread its own.
"""

from __future__ import annotations

import base64
import gc
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote_to_bytes

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from cluster.endpoint import Endpoint
from cluster.errors import StoreError

log = logging.getLogger("gearctl.store")

BATCH_BYTES = 32 * 1024  # request bytes per pipelined batch: fits the socket buffers (no deadlock)
BUSY_WAIT = 0.02  # seconds between tries while another lru_crawler job runs
BUSY_TRIES = 100
MAX_PASSES = 200
STALE_PASSES = 8
_METADUMP_LINE = re.compile(
    rb"^key=(\S+) (?:exp=\S+ )?(?:la=(\d+) )?(?:\S+ )*?cas=(\d+) (?:\S+ )*?size=(\d+)", re.M
)
_METADUMP_ERROR = re.compile(rb"^(?:ERROR|CLIENT_ERROR|SERVER_ERROR)[^\n]*", re.M)
UPTIME_SLACK = 2.0  # seconds: memcached's `uptime` is whole seconds, read on its own clock tick
METADUMP_READ = 256 * 1024  # bytes read from a metadump at a time
_ERRORS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
_PLAIN_KEY = re.compile(rb"[\x21-\x7e\x80-\xff]{1,250}")


class StoreClosed(StoreError):
    """memcached closed the connection before its answer was complete."""


class StoredItem(NamedTuple):
    """One listed key. A tuple: a listing makes one per key, 3x faster than a dataclass."""

    key: str
    cas: int  # memcached's store order: sorting by it restores FIFO order
    size: int  # bytes memcached uses for the item (key, value and header)
    last_access: int | None = None  # unix time of the last write or read (metadump `la`)


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def decode_key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parse_metadump_line(line: bytes) -> StoredItem | None:
    """One `key=<url-encoded> ... cas=N ... size=N` line; None (logged) when it does not parse."""
    items = parse_metadump(line + b"\n")
    return items[0] if items else None


def parse_metadump(lines: bytes) -> list[StoredItem]:
    """The items of whole metadump lines (each ended by \\n), parsed in one regex pass: a listing
    of 10k keys takes a few ms instead of tens. Lines that do not parse are logged and skipped."""
    found = _METADUMP_LINE.findall(lines)
    if len(found) != lines.count(b"\n"):
        for line in lines.splitlines():
            if not _METADUMP_LINE.match(line):
                log.warning("skipping unreadable metadump line %r", line[:200])
    return [
        StoredItem(
            decode_key(unquote_to_bytes(key) if b"%" in key else key),
            int(cas),
            int(size),
            int(last_access or 0) or None,
        )
        for key, last_access, cas, size in found
    ]


class _ValueAndFlags:
    """pymemcache serde that hands values over untouched, together with their flags."""

    def serialize(self, _key: bytes, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, _key: bytes, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


class Store:
    def __init__(self, endpoint: Endpoint, *, timeout: float = 2.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = Client(
            (endpoint.host, endpoint.port),
            serde=_ValueAndFlags(),
            connect_timeout=timeout,
            timeout=timeout,
            no_delay=True,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _fail(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"memcached store {self.endpoint}: {action} failed: {exc}")

    # -- single keys (pymemcache) --------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, flags) of `key`, or None when it does not exist."""
        try:
            return self._client.get(encode_key(key))
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"get {key!r}", exc) from None

    def set(self, key: str, value: bytes, flags: int) -> None:
        try:
            stored = self._client.set(encode_key(key), (value, flags), noreply=False)
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"set {key!r}", exc) from None
        if not stored:
            raise StoreError(f"memcached store {self.endpoint} refused to store {key!r}")

    def delete(self, key: str) -> bool:
        """Delete `key`; False when it did not exist."""
        try:
            return bool(self._client.delete(encode_key(key), noreply=False))
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"delete {key!r}", exc) from None

    def ping(self) -> bool:
        try:
            self._client.version()
        except (MemcacheError, OSError):
            return False
        return True

    # -- bulk (pipelined meta commands) --------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        """(value, flags) of every key that exists, read in pipelined `mg` batches.

        Reads do not touch the items (`u`): their last-access time and LRU place stay as they
        were, so `store inspect` can still tell how long ago gearmand stored a job."""
        found: dict[str, tuple[bytes, int]] = {}
        with self._connection("multi-get") as conn:
            for batch, request in _batches(keys, b"mg %b v f u O%d q\r\n"):
                conn.sendall(request)
                for line in _replies(conn.reader, self.endpoint):
                    if not line.startswith(b"VA "):
                        raise StoreError(f"memcached store {self.endpoint}: mg answered {line!r}")
                    size, flags, index = _value_header(line)
                    data = conn.reader.read(size + 2)
                    if len(data) != size + 2:
                        raise StoreClosed(f"memcached store {self.endpoint} closed during mg")
                    found[batch[index]] = (data[:size], flags)
        return found

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete keys in pipelined `md` batches; each batch is confirmed before the next is sent.

        Returns how many keys were deleted (keys already gone are not counted).
        """
        deleted = 0
        with self._connection("delete batch") as conn:
            for batch, request in _batches(keys, b"md %b q O%d\r\n"):
                conn.sendall(request)
                deleted += len(batch)
                for line in _replies(conn.reader, self.endpoint):
                    if not line.startswith((b"NF", b"HD")):  # quiet mode may still send these
                        raise StoreError(f"memcached store {self.endpoint}: md answered {line!r}")
                    if line.startswith(b"NF"):
                        deleted -= 1
        return deleted

    # -- counters ------------------------------------------------------------------------------

    def stats(self) -> dict[str, str]:
        """memcached's general `stats`, values as memcached printed them.

        It goes over the store's kept-open connection: the agent checks its store every
        `check_interval`, and a fresh connection each time was most of its idle CPU. A
        connection that broke since the last call (memcached restarted) is opened again once;
        a timeout is not tried again (a hung memcached would take twice as long to tell)."""
        for last_try in (False, True):
            try:
                answer = self._client.raw_command(b"stats", b"END\r\n")
                break
            except TimeoutError as exc:
                raise self._fail("stats", exc) from None
            except (MemcacheError, OSError) as exc:  # pymemcache closed the broken connection
                if last_try:
                    raise self._fail("stats", exc) from None
        lines = answer.decode(errors="replace").splitlines()
        stats = (line.split(" ", 2) for line in lines if line.startswith("STAT "))
        return {name: value for _, name, value in stats}

    def identity(self) -> StoreIdentity:
        """Which memcached process answers: its `pid` and when it started (from `uptime`)."""
        stats = self.stats()
        try:
            return StoreIdentity(int(stats["pid"]), time.time() - int(stats["uptime"]))
        except (KeyError, ValueError):
            raise StoreError(f"memcached {self.endpoint}: stats without pid/uptime") from None

    def curr_items(self) -> int:
        return int(self.stats()["curr_items"])

    def bytes_used(self) -> int:
        return int(self.stats()["bytes"])

    # -- enumeration ---------------------------------------------------------------------------

    def items(self) -> list[StoredItem]:
        """One `lru_crawler metadump all` pass. Not an exact snapshot: it can miss items."""
        with self._connection("metadump") as conn:
            for _ in range(BUSY_TRIES):
                conn.sendall(b"lru_crawler metadump all\r\n")
                line = _readline(conn.reader, self.endpoint, "metadump")
                if not line.startswith(b"BUSY"):
                    break
                time.sleep(BUSY_WAIT)  # another lru_crawler job runs: try again shortly
            else:
                raise StoreError(f"memcached store {self.endpoint}: lru_crawler stayed busy")
            if line == b"END":
                return []
            with _gc_paused():
                return self._read_metadump(line + b"\n", conn.reader.read1)

    def _read_metadump(self, data: bytes, read: Callable[[int], bytes]) -> list[StoredItem]:
        """The items of a metadump from its first line (`data`) on, reading more with `read`."""
        items: list[StoredItem] = []
        while True:
            cut = data.rfind(b"\n") + 1  # parse whole lines; keep the cut-off one for later
            lines, data = data[:cut], data[cut:]
            end = lines.endswith(b"END\r\n") and (len(lines) == 5 or lines[-6:-5] == b"\n")
            if end:
                lines = lines[:-5]
            if error := _METADUMP_ERROR.search(lines):
                raise StoreError(f"memcached store {self.endpoint}: metadump: {error[0]!r}")
            items += parse_metadump(lines)
            if end:
                return items
            more = read(METADUMP_READ)
            if not more:
                raise StoreClosed(
                    f"memcached store {self.endpoint} closed the connection during metadump"
                )
            data += more

    def snapshot(
        self,
        predicate: Callable[[StoredItem], bool] | None = None,
        *,
        expected: int | None = None,
        max_passes: int = MAX_PASSES,
        stale_passes: int = STALE_PASSES,
    ) -> list[StoredItem]:
        """Every item of the store (those matching `predicate`), sorted by cas: the store order.

        One metadump pass can miss items, so passes repeat and their union is kept until it holds
        `curr_items` keys (or, with `expected`, that many keys matching `predicate`). It stops
        early, with a warning, after `stale_passes` passes in a row found no new key or after
        `max_passes`. A pass memcached hangs up on (StoreClosed) is retried; it is raised only if
        it is the last pass. Exact only for a store nobody writes meanwhile (or, with `expected`,
        a subset that nobody but the caller changes): keys deleted between passes stay in the
        union.
        """
        seen: dict[str, StoredItem] = {}
        matching: list[StoredItem] = []  # of `seen`, those `predicate` keeps (asked once a key)
        keep = predicate or _any
        stale = passes = 0
        while True:
            before = len(seen)
            passes += 1
            try:
                listed = self.items()
            except StoreClosed as exc:  # memcached hung up mid-dump: this pass found nothing
                if passes >= max_passes or stale + 1 >= stale_passes:
                    raise
                log.warning("%s; listing again", exc)
                listed = []
            for item in listed:
                if item.key not in seen:
                    seen[item.key] = item
                    if keep(item):
                        matching.append(item)
            if expected is None:
                found, target = len(seen), self.curr_items()
            else:
                found, target = len(matching), expected
            stale = stale + 1 if len(seen) == before else 0
            if found >= target or stale >= stale_passes or passes >= max_passes:
                break
            time.sleep(0.005 * stale)  # nothing new: give the LRU maintainer a moment
        level = logging.DEBUG if found >= target else logging.WARNING
        log.log(
            level,
            "store %s: %d of %d keys after %d metadump passes",
            self.endpoint,
            found,
            target,
            passes,
        )
        return sorted(matching, key=lambda item: item.cas)

    # -- raw text protocol ---------------------------------------------------------------------

    @contextmanager
    def _connection(self, action: str) -> Iterator[_Connection]:
        """A fresh socket for one exchange; socket errors become a StoreError naming `action`."""
        try:
            with socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.timeout
            ) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with sock.makefile("rb") as reader:
                    yield _Connection(sock, reader)
        except OSError as exc:
            raise self._fail(action, exc) from None


@dataclass
class _Connection:
    sock: socket.socket
    reader: BinaryIO

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)


@dataclass(frozen=True)
class StoreIdentity:
    pid: int
    started: float  # wall clock, to a second (memcached's `uptime` is in whole seconds)

    def restarted_since(self, earlier: StoreIdentity) -> bool:
        """Another process, or the same PID started again (a container's PID 1)."""
        return self.pid != earlier.pid or self.started > earlier.started + UPTIME_SLACK


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: a listing makes a tuple per key, and collections
    triggered by them would scan the growing list again and again (40% of a 1M-key listing)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _any(_item: StoredItem) -> bool:
    return True


def _batches(keys: Iterable[str], template: bytes) -> Iterator[tuple[list[str], bytes]]:
    """Group keys into pipelined requests of about BATCH_BYTES, each closed by `mn` (no-op)."""
    batch: list[str] = []
    lines: list[bytes] = []
    size = 0
    for key in keys:
        line = template % (_meta_key(key), len(batch))
        batch.append(key)
        lines.append(line)
        size += len(line)
        if size >= BATCH_BYTES:
            yield batch, b"".join(lines) + b"mn\r\n"
            batch, lines, size = [], [], 0
    if batch:
        yield batch, b"".join(lines) + b"mn\r\n"


def _meta_key(key: str) -> bytes:
    """A key as a meta command takes it: as it is when the text protocol can carry it (no
    whitespace or control bytes), else base64-encoded with the `b` flag. memcached checks the
    250-byte limit on the key as sent, so base64 would refuse every key above 187 bytes."""
    raw = encode_key(key)
    if _PLAIN_KEY.fullmatch(raw):
        return raw
    return base64.b64encode(raw) + b" b"


def _replies(reader: BinaryIO, endpoint: Endpoint) -> Iterator[bytes]:
    """Reply lines of one pipelined batch, up to its closing `MN`; errors become StoreError."""
    while (line := _readline(reader, endpoint, "meta batch")) != b"MN":
        if line.startswith(_ERRORS):
            raise StoreError(f"memcached store {endpoint}: meta command failed: {line!r}")
        yield line


def _readline(reader: BinaryIO, endpoint: Endpoint, action: str) -> bytes:
    """One reply line without its end (metadump ends its lines with a bare \\n)."""
    line = reader.readline()
    if not line.endswith(b"\n"):
        raise StoreClosed(f"memcached store {endpoint} closed the connection during {action}")
    return line.rstrip(b"\r\n")


def _value_header(line: bytes) -> tuple[int, int, int]:
    """(size, flags, opaque index) of an `mg` hit: `VA <size> f<flags> O<index>`."""
    parts = line.split()
    if len(parts) == 4 and parts[2][:1] == b"f" and parts[3][:1] == b"O":  # the usual order
        return int(parts[1]), int(parts[2][1:]), int(parts[3][1:])
    size, *tokens = parts[1:]
    fields = {token[:1]: token[1:] for token in tokens}
    return int(size), int(fields.get(b"f", b"0")), int(fields[b"O"])
