"""One memcached store, as gearmand's libmemcached queue uses it.

Values and flags go through pymemcache (flags carry the job's priority). Two things pymemcache
has no call for go over a raw text-protocol socket: `lru_crawler metadump all`, which lists keys
with their `cas` (memcached's store order), and pipelined `delete ... noreply` batches closed by
`mn` (meta no-op), which answers once every delete before it was processed.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from cluster.endpoint import Endpoint
from cluster.errors import StoreError

log = logging.getLogger("gearctl.store")

GET_BATCH = 500
BUSY_RETRIES = 50


@dataclass(frozen=True)
class StoredItem:
    key: str
    cas: int
    size: int


class _ValueAndFlags:
    """pymemcache serde that hands values over untouched, together with their flags."""

    def serialize(self, _key: str, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, _key: str, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


def parse_metadump_line(line: str) -> StoredItem | None:
    """One `key=... cas=N ... size=N` line; None (and a log line) when it does not parse."""
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    try:
        return StoredItem(unquote(fields["key"]), int(fields["cas"]), int(fields.get("size", 0)))
    except (KeyError, ValueError):
        log.warning("skipping unreadable metadump line %r", line[:200])
        return None


class Store:
    def __init__(self, endpoint: Endpoint, *, timeout: float = 2.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = Client(
            (endpoint.host, endpoint.port),
            serde=_ValueAndFlags(),
            connect_timeout=timeout,
            timeout=timeout,
            key_prefix=b"",
        )

    def _fail(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"memcached store {self.endpoint}: {action} failed: {exc}")

    # -- values -------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            return self._client.get(key)
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"get {key!r}", exc) from None

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """Values and flags of the keys that exist, in multi-get batches."""
        found: dict[str, tuple[bytes, int]] = {}
        try:
            for start in range(0, len(keys), GET_BATCH):
                found.update(self._client.get_many(keys[start : start + GET_BATCH]))
        except (MemcacheError, OSError) as exc:
            raise self._fail("multi-get", exc) from None
        return found

    def set(self, key: str, value: bytes, flags: int) -> None:
        try:
            if not self._client.set(key, (value, flags), noreply=False):
                raise StoreError(f"memcached store {self.endpoint} refused to store {key!r}")
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"set {key!r}", exc) from None

    def delete(self, key: str) -> bool:
        try:
            return bool(self._client.delete(key, noreply=False))
        except (MemcacheError, OSError) as exc:
            raise self._fail(f"delete {key!r}", exc) from None

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete pipelined (`noreply`), then wait until memcached has processed every delete."""
        request = b"".join(f"delete {quote_key(key)} noreply\r\n".encode() for key in keys)
        self._exchange(request + b"mn\r\n", b"MN\r\n", "delete batch")

    # -- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, str]:
        try:
            raw = self._client.stats()
        except (MemcacheError, OSError) as exc:
            raise self._fail("stats", exc) from None
        return {_text(k): _text(v) for k, v in raw.items()}

    def curr_items(self) -> int:
        return int(self.stats()["curr_items"])

    def bytes_used(self) -> int:
        return int(self.stats()["bytes"])

    def ping(self) -> bool:
        try:
            self._client.version()
            return True
        except (MemcacheError, OSError):
            return False

    # -- enumeration --------------------------------------------------------------------------

    def items(self) -> list[StoredItem]:
        """One `lru_crawler metadump all` pass. Not an exact snapshot: it can miss items."""
        for _ in range(BUSY_RETRIES):
            text = self._exchange(b"lru_crawler metadump all\r\n", b"END\r\n", "metadump")
            if not text.startswith("BUSY"):
                break
            time.sleep(0.02)  # another crawl is running
        else:
            raise StoreError(f"memcached store {self.endpoint}: lru_crawler stayed busy")
        lines = text.splitlines()[:-1]  # the last line is END
        return [item for line in lines if (item := parse_metadump_line(line)) is not None]

    def snapshot(self, max_passes: int = 100) -> list[StoredItem]:
        """Every key in a store nobody writes: passes repeat until the union of keys seen is as
        large as `curr_items`. Sorted by cas (the order they were stored in)."""
        seen: dict[str, StoredItem] = {}
        expected = self.curr_items()
        for _ in range(max_passes):
            for item in self.items():
                seen.setdefault(item.key, item)
            if len(seen) >= expected:
                break
        else:
            log.warning("store %s: saw %d of %d items after %d passes", self.endpoint,
                        len(seen), expected, max_passes)  # fmt: skip
        return sorted(seen.values(), key=lambda item: item.cas)

    def _exchange(self, request: bytes, terminator: bytes, action: str) -> str:
        """Send a text-protocol request and read until the reply ends with `terminator`."""
        try:
            with socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.timeout
            ) as sock:
                sock.settimeout(self.timeout)
                sock.sendall(request)
                chunks = bytearray()
                while not chunks.endswith(terminator) and not chunks.startswith(b"BUSY"):
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise StoreError(f"memcached store {self.endpoint} closed during {action}")
                    chunks += chunk
                    if chunks.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                        raise StoreError(f"memcached store {self.endpoint}: {action}: "
                                         f"{bytes(chunks[:200])!r}")  # fmt: skip
        except OSError as exc:
            raise self._fail(action, exc) from None
        return chunks.decode(errors="replace")


def quote_key(key: str) -> str:
    """A key as the text protocol needs it (metadump prints keys URL-encoded the same way)."""
    return key if key.isprintable() and " " not in key else quote(key)


def _text(value: bytes | str | int | float) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
