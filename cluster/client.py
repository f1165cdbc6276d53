"""A Gearman client that fails over between job servers (and, re-exported here, the Worker).

    from cluster.client import Client
    client = Client(zookeeper="127.0.0.1:2181", cluster="local")  # or Client(servers=["h:4730"])
    client.submit("reverse", b"hello")                  # b"olleh", once a worker ran it
    client.submit_background("resize", b"img-1")        # the job handle
    client.submit_background_many([("resize", b"img-2"), ("resize", b"img-3", "my-unique")])

Failover rules:
- A submit goes to the next live server (round robin). On connection refused, a timeout, a
  closed connection or a retryable server error (QUEUE_ERROR: the store is full) it is retried
  on the other live servers, then again after a short backoff, until `retry_timeout` has passed;
  then NoServerError is raised. Success is only ever reported for a JOB_CREATED.
- A retried job keeps its unique. When the caller gives none the client makes a UUID4 (as
  libgearman does): gearmand keeps an empty unique empty, and its libmemcached queue stores each
  job under `<prefix><function>-<unique>`, so jobs with empty uniques would overwrite each other.
- Delivery is at least once across a failover: a submit whose JOB_CREATED was lost with the
  connection may have been persisted by the server that died, and runs again when that store
  is restored. A foreground job interrupted by its server's death is run again on another one.
- A failed server is skipped for `down_for` seconds unless no other server is left.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cluster.discovery import ServerSource, server_source
from cluster.endpoint import Endpoint
from cluster.errors import (
    GearctlError,
    GearmanConnectionError,
    GearmanServerError,
    ProtocolError,
)
from cluster.protocol import (
    BatchSubmitError,
    GearmanConnection,
    JobFailedError,
    PacketType,
    Priority,
    foreground_submit_type,
    job_result,
    request,
)
from cluster.worker import Worker, WorkerJob

__all__ = [
    "BackgroundJob",
    "Client",
    "JobFailedError",
    "JobTimeoutError",
    "NoServerError",
    "Worker",
    "WorkerJob",
]

log = logging.getLogger(__name__)

RETRYABLE_SERVER_ERRORS = frozenset({"QUEUE_ERROR", "JOB_QUEUE_FULL"})
"""ERROR codes that mean "this server cannot take the job now": try another one."""

T = TypeVar("T")


class NoServerError(GearmanConnectionError):
    """No live server acknowledged the job within the retry time: it was NOT submitted.

    For a batch, `acknowledged` leading jobs were accepted and the rest were not.
    """

    acknowledged: int = 0


class JobTimeoutError(GearctlError, TimeoutError):
    """A foreground job gave no result within its timeout (it may still run)."""


@dataclass(frozen=True, slots=True)
class BackgroundJob:
    """One job of a batch; `unique=None` gets a fresh UUID4."""

    function: str
    payload: bytes
    unique: str | None = None
    priority: str = "normal"


JobSpec = (
    BackgroundJob
    | tuple[str, bytes]
    | tuple[str, bytes, str | None]
    | tuple[str, bytes, str | None, str]
)


def new_unique() -> str:
    return str(uuid.uuid4())


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_uniques(count: int) -> list[str]:
    """`count` random UUID4 strings, 4x faster than uuid.uuid4() one by one (for batches)."""
    hexes = os.urandom(16 * count).hex()
    variant = _VARIANT
    return [
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"
        for h in (hexes[i : i + 32] for i in range(0, 32 * count, 32))
    ]


class Client:
    """Submit jobs to a Gearman cluster, failing over between its live servers.

    Give `servers` (["host:port", ...] or "host:port,...") or `zookeeper` ("host:port,...") with
    `cluster` (the servers are then the cluster's live members, followed as they come and go).
    A Client keeps one connection per server and is not thread-safe: use one per thread.
    """

    def __init__(
        self,
        servers: Iterable[str | Endpoint] | str | None = None,
        *,
        zookeeper: str | None = None,
        cluster: str = "local",
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        retry_timeout: float = 15.0,
        down_for: float = 1.0,
        chunk: int = 5000,
        source: ServerSource | None = None,
    ) -> None:
        self.source = source or server_source(servers, zookeeper, cluster)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_timeout = retry_timeout
        self.down_for = down_for
        self.chunk = max(1, chunk)
        self._connections: dict[Endpoint, GearmanConnection] = {}
        self._down_until: dict[Endpoint, float] = {}
        self._turn = 0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        self.source.close()

    # Public API.

    def submit_background(
        self,
        function: str,
        payload: bytes | str,
        *,
        unique: str | None = None,
        priority: str = "normal",
    ) -> bytes:
        """Queue a background job; return its handle once a server acknowledged it."""
        job_unique = new_unique() if unique is None else unique
        data = _bytes(payload)
        Priority.parse(priority)

        def attempt(conn: GearmanConnection) -> bytes:
            conn.read_timeout = self.read_timeout
            return conn.submit_background(function, data, unique=job_unique, priority=priority)

        return self._with_failover(attempt, f"background job {function!r}", self.retry_timeout)

    def submit_background_many(
        self, jobs: Iterable[JobSpec], *, window: int = 1000
    ) -> list[bytes | None]:
        """Queue many background jobs, pipelined on one connection; return handles in order.

        `jobs` holds BackgroundJob or (function, payload[, unique[, priority]]) tuples. Jobs go
        out in chunks of `chunk` (a constructor argument) to one server at a time; a chunk that
        fails is sent on to another server: from the first job not acknowledged when gearmand
        refused one (BatchSubmitError), or whole after a connection failure (its answers were
        lost, so up to a chunk may run twice). An entry is None when its job was acknowledged
        but its handle was not reported (the jobs before a refused one in the same chunk).
        Raises NoServerError (with `acknowledged`: how many leading jobs were accepted).
        """
        specs = [_normalize(job) for job in jobs]
        missing = [i for i, spec in enumerate(specs) if spec[1] is None]
        for i, unique in zip(missing, new_uniques(len(missing)), strict=True):
            function, _, payload, priority = specs[i]
            specs[i] = (function, unique, payload, priority)
        handles: list[bytes | None] = []
        for start in range(0, len(specs), self.chunk):
            chunk = specs[start : start + self.chunk]
            try:
                handles.extend(self._submit_chunk(chunk, window))
            except NoServerError as exc:
                exc.acknowledged += len(handles)
                raise
        return handles

    def submit(
        self,
        function: str,
        payload: bytes | str,
        *,
        unique: str | None = None,
        priority: str = "normal",
        timeout: float = 60.0,
    ) -> bytes:
        """Run a foreground job and return its result (WORK_COMPLETE's data).

        WORK_FAIL and WORK_EXCEPTION raise JobFailedError (not retried). If the server dies
        while the job runs, the job is submitted again to another server. JobTimeoutError when
        no result came within `timeout` seconds; NoServerError when no server took the job.
        """
        job_unique = new_unique() if unique is None else unique
        data = _bytes(payload)
        type_ = foreground_submit_type(priority)
        deadline = time.monotonic() + timeout
        packet = request(type_, _text(function), _text(job_unique), data)

        def attempt(conn: GearmanConnection) -> bytes:
            return self._run_foreground(conn, packet, deadline)

        return self._with_failover(attempt, f"job {function!r}", timeout, deadline=deadline)

    def servers(self) -> list[Endpoint]:
        return self.source.servers()

    # Internals.

    def _submit_chunk(
        self, chunk: Sequence[tuple[str, str, bytes, str]], window: int
    ) -> list[bytes | None]:
        handles: list[bytes | None] = []
        remaining = chunk

        def attempt(conn: GearmanConnection) -> None:
            nonlocal remaining
            conn.read_timeout = self.read_timeout
            try:
                handles.extend(conn.submit_background_many(remaining, window=window))
            except BatchSubmitError as exc:
                # The first `acknowledged` jobs are accepted; their handles were not kept.
                handles.extend([None] * exc.acknowledged)
                remaining = remaining[exc.acknowledged :]
                raise

        try:
            self._with_failover(attempt, f"batch of {len(chunk)} jobs", self.retry_timeout)
        except NoServerError as exc:
            exc.acknowledged = len(handles)
            raise
        return handles

    def _run_foreground(self, conn: GearmanConnection, packet: object, deadline: float) -> bytes:
        conn.read_timeout = max(0.001, min(self.read_timeout, deadline - time.monotonic()))
        conn.send(packet)  # type: ignore[arg-type]
        created = conn.receive()
        if created.type is PacketType.ERROR:
            raise GearmanServerError(_str(created.args[0]), _str(created.args[1]))
        if created.type is not PacketType.JOB_CREATED:
            conn.close()
            raise ProtocolError(f"{conn.endpoint} answered a submit with {created.type.name}")
        handle = created.args[0]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                conn.close()  # its late answer must not be read as another job's
                raise JobTimeoutError(f"job {handle.decode(errors='replace')}: no result in time")
            conn.read_timeout = remaining
            try:
                answer = conn.receive()
            except GearmanConnectionError:
                if time.monotonic() >= deadline:
                    raise JobTimeoutError(
                        f"job {handle.decode(errors='replace')}: no result in time"
                    ) from None
                raise
            result = job_result(answer, handle)
            if result is not None:
                return result

    def _with_failover(
        self,
        attempt: Callable[[GearmanConnection], T],
        what: str,
        retry_timeout: float,
        *,
        deadline: float | None = None,
    ) -> T:
        """Run `attempt` on live servers in turn until one succeeds or time runs out."""
        deadline = deadline if deadline is not None else time.monotonic() + retry_timeout
        errors: list[str] = []
        delay = 0.05
        while True:
            for endpoint in self._candidates():
                try:
                    return attempt(self._connection(endpoint))
                except GearmanServerError as exc:
                    if exc.code not in RETRYABLE_SERVER_ERRORS:
                        raise
                    errors.append(f"{endpoint}: {exc}")
                    self._mark_down(endpoint)
                except (GearmanConnectionError, ProtocolError) as exc:
                    errors.append(f"{endpoint}: {exc}")
                    self._drop(endpoint)
                    self._mark_down(endpoint)
                if time.monotonic() >= deadline:
                    break
            now = time.monotonic()
            if now >= deadline:
                tried = "; ".join(errors[-3:]) or "no live server known"
                raise NoServerError(f"{what}: no server acknowledged it in time ({tried})")
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 1.0)

    def _candidates(self) -> list[Endpoint]:
        """Live servers starting at the next in turn; recently failed ones last."""
        servers = self.source.servers()
        for gone in set(self._connections) - set(servers):
            self._drop(gone)
        if not servers:
            return []
        self._turn = (self._turn + 1) % len(servers)
        rotated = servers[self._turn :] + servers[: self._turn]
        now = time.monotonic()
        healthy = [s for s in rotated if self._down_until.get(s, 0.0) <= now]
        return healthy + [s for s in rotated if s not in healthy]

    def _connection(self, endpoint: Endpoint) -> GearmanConnection:
        conn = self._connections.get(endpoint)
        if conn is None:
            conn = GearmanConnection(
                endpoint, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
            )
            self._connections[endpoint] = conn
        return conn

    def _drop(self, endpoint: Endpoint) -> None:
        conn = self._connections.pop(endpoint, None)
        if conn is not None:
            conn.close()

    def _mark_down(self, endpoint: Endpoint) -> None:
        log.info("gearmand %s failed; trying another server", endpoint)
        self._down_until[endpoint] = time.monotonic() + self.down_for


def _normalize(job: JobSpec) -> tuple[str, str | None, bytes, str]:
    """(function, unique, payload, priority), the order GearmanConnection takes; unique may be
    None (filled in by the caller, in bulk)."""
    if isinstance(job, BackgroundJob):
        function, payload, unique, priority = job.function, job.payload, job.unique, job.priority
    elif len(job) == 2:
        (function, payload), unique, priority = job, None, "normal"
    elif len(job) == 3:
        (function, payload, unique), priority = job, "normal"
    else:
        function, payload, unique, priority = job  # type: ignore[misc]
    if type(payload) is not bytes:
        payload = _bytes(payload)
    return (function, unique, payload, priority)


def _bytes(payload: bytes | str) -> bytes:
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")
