"""A Gearman client that fails over between job servers (and, re-exported here, the Worker).

    from cluster.gearman.client import Client
    client = Client(zookeeper="127.0.0.1:2181", cluster="local")  # or Client(servers=["h:4730"])
    client.submit("reverse", b"hello")                  # b"olleh", once a worker ran it
    client.submit_background("resize", b"img-1")        # the job handle
    client.submit_background_many([("resize", b"img-2"), ("resize", b"img-3", "my-unique")])

Failover rules:
- A submit goes to the next live server (round robin). On connection refused, a timeout, a
  closed connection or a retryable server error (QUEUE_ERROR: the store is full) it is retried
  on the other live servers, then again after a short backoff, until `retry_timeout` has passed;
  then NoServerError is raised. Success is only ever reported for a JOB_CREATED.
- A batch (`submit_background_many`) is one pipeline on one connection. gearmand answers each
  submit, in order, and goes on after refusing one (QUEUE_ERROR: its store is full, maybe only
  for large jobs): the refused jobs, and those whose answer a broken connection lost, go on to
  the next server; acknowledged jobs are never sent again, and `retry_timeout` counts from the
  last acknowledgement.
- A retried job keeps its unique. When the caller gives none (None or "") the client makes a
  UUID4 (as libgearman does), so it never sends an empty unique: gearmand keeps an empty unique
  empty, and its libmemcached queue stores each job under `<prefix><function>-<unique>`, so jobs
  with empty uniques overwrite each other (only the last one per function is durable).
- Delivery is at least once across a failover: a submit whose JOB_CREATED was lost with the
  connection may have been persisted by the server that died, and runs again when that store
  is restored. A foreground job interrupted by its server's death is run again on another one.
- A failed server is skipped for `down_for` seconds unless no other server is left.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TypeVar

from cluster.endpoint import Endpoint
from cluster.errors import (
    GearctlError,
    GearmanConnectionError,
    GearmanServerError,
    ProtocolError,
)
from cluster.gearman.discovery import ServerSource, server_source
from cluster.gearman.protocol import (
    BatchConnectionError,
    BatchSubmitError,
    GearmanConnection,
    JobExceptionError,
    JobFailedError,
    JobStatus,
    JobUpdate,
    PacketType,
    Priority,
    as_payload,
    encode_background,
    foreground_submit_type,
    job_result,
    job_update,
    request,
)

__all__ = [
    "BackgroundJob",
    "Client",
    "JobExceptionError",
    "JobFailedError",
    "JobStatus",
    "JobTimeoutError",
    "JobUpdate",
    "NoServerError",
    "Retry",
    "Worker",
    "WorkerJob",
]

log = logging.getLogger(__name__)

RETRYABLE_SERVER_ERRORS = frozenset({"QUEUE_ERROR", "JOB_QUEUE_FULL"})
"""ERROR codes that mean "this server cannot take the job now": try another one."""
REMEMBERED_JOBS = 20_000
"""How many handles and uniques of background jobs a Client remembers the server of."""

T = TypeVar("T")


class NoServerError(GearmanConnectionError):
    """No live server acknowledged the job within the retry time: it was NOT submitted.

    For a batch, `handles` has one entry per job: its handle if a server acknowledged it, None
    if none did (those jobs were not submitted).
    """

    def __init__(self, message: str, handles: list[bytes | None] | None = None) -> None:
        super().__init__(message)
        self.handles = handles if handles is not None else []

    @property
    def acknowledged(self) -> int:
        return sum(handle is not None for handle in self.handles)


LIVE_CHECK_EVERY = 1.0  # seconds: how often a silent foreground job's server is looked up


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


_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_RFC_4122 = bytes((b & 0x3F) | 0x80 for b in range(256))
_DASHES = (8, 13, 18, 23)
_HEX_DIGITS = [(at, n) for n, at in enumerate(p for p in range(36) if p not in _DASHES)]
"""(position in the 36-character form, index among the 32 hex digits) of each digit."""


def new_uniques(count: int) -> list[str]:
    """`count` random UUID4 strings in canonical form, made in bulk with strided byte copies:
    several times faster than str(uuid.uuid4()) one by one (for batches)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_RFC_4122)
    digits = raw.hex().encode()
    text = bytearray(b"-" * (37 * count))  # 36 characters and a newline each
    for at, n in _HEX_DIGITS:
        text[at::37] = digits[n::32]
    text[36::37] = b"\n" * count
    return text.decode().splitlines()


class Client:
    """Submit jobs to a Gearman cluster, failing over between its live servers.

    Give `servers` (["host:port", ...] or "host:port,...") or `zookeeper` ("host:port,...") with
    `cluster` (the servers are then the cluster's live members, followed as they come and go).

    A Client is safe to share between threads: each call checks a connection out of a pool
    per server (making one when none is idle) and puts it back when its answer was read, so
    threads never share a connection and a pool holds as many connections per server as
    threads submitted at the same time. A `source` given is not closed by `close()`.
    `on_failover(endpoint)` is called on the submitting thread each time an attempt on a server
    failed and the call goes on to another: a foreground job may have run there already (the
    drills count its second run as a re-run, not a duplicate).
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
        source: ServerSource | None = None,
        on_failover: Callable[[Endpoint], object] | None = None,
    ) -> None:
        self._owns_source = source is None
        self.on_failover = on_failover
        self.source = source or server_source(servers, zookeeper, cluster)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_timeout = retry_timeout
        self.down_for = down_for
        self._lock = threading.Lock()
        self._idle: dict[Endpoint, list[GearmanConnection]] = {}
        self._down_until: dict[Endpoint, float] = {}
        self._turn = 0
        self._held_by: OrderedDict[bytes | str, Endpoint] = OrderedDict()
        """Server of each recent background job (by handle and by unique), for `status`."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        if self._owns_source:
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
        job_unique = unique or new_unique()
        data = as_payload(payload)
        Priority.parse(priority)

        def attempt(conn: GearmanConnection) -> bytes:
            conn.read_timeout = self.read_timeout
            handle = conn.submit_background(function, data, unique=job_unique, priority=priority)
            self._remember(conn.endpoint, handle, job_unique)
            return handle

        return self._with_failover(attempt, f"background job {function!r}", self.retry_timeout)

    def submit_background_many(self, jobs: Iterable[JobSpec], *, window: int = 1000) -> list[bytes]:
        """Queue many background jobs pipelined on one connection; return handles in order.

        `jobs` holds BackgroundJob or (function, payload[, unique[, priority]]) tuples; all are
        checked before the first is sent (ValueError, TypeError). At most `window` submits are
        unanswered at a time. gearmand answers every submit of a pipeline, in order, and goes on
        after refusing one (QUEUE_ERROR: its store is full): each answer is mapped to its job,
        and only the refused jobs, and those whose answer the connection lost, are sent on to
        another server. A job is never sent again once acknowledged, and counts as submitted
        only once a server acknowledged it. Raises NoServerError when no server took the rest
        within `retry_timeout` of the last acknowledgement (`handles`: one per job, None for
        those not acknowledged).
        """
        packets = encode_background(jobs, _fresh_uniques())
        handles: list[bytes | None] = [None] * len(packets)
        pending = list(range(len(packets)))  # jobs not acknowledged yet, in order
        acknowledged: list[int] = []  # grows with every acknowledgement: failover progress

        def attempt(conn: GearmanConnection) -> None:
            nonlocal pending
            conn.read_timeout = self.read_timeout
            answers: list[bytes | None] = []
            rest = packets if len(pending) == len(packets) else [packets[i] for i in pending]
            try:
                answers = conn.submit_packets(rest, window=window)
            except (BatchSubmitError, BatchConnectionError) as exc:
                answers = exc.handles
                raise
            finally:
                for index, handle in zip(pending, answers, strict=False):
                    if handle is not None:
                        handles[index] = handle
                        acknowledged.append(index)
                pending = [i for i in pending if handles[i] is None]

        try:
            self._with_failover(
                attempt, f"batch of {len(packets)} jobs", self.retry_timeout, progress=acknowledged
            )
        except NoServerError as exc:
            exc.handles = handles
            raise
        return handles  # type: ignore[return-value]  # every job acknowledged: no None left

    def submit(
        self,
        function: str,
        payload: bytes | str,
        *,
        unique: str | None = None,
        priority: str = "normal",
        timeout: float = 60.0,
        on_update: Callable[[JobUpdate], object] | None = None,
    ) -> bytes:
        """Run a foreground job and return its result (WORK_COMPLETE's data).

        `on_update(JobUpdate)` is called (on this thread) for each WORK_DATA, WORK_WARNING and
        WORK_STATUS the worker sends while the job runs. WORK_EXCEPTION raises
        JobExceptionError (its `text` is the worker's), WORK_FAIL JobFailedError; neither is
        retried. If the server dies while the job runs, the job is submitted again to another
        server (its updates then start over). JobTimeoutError when no result came within
        `timeout` seconds; NoServerError when no server took the job.
        """
        job_unique = unique or new_unique()
        data = as_payload(payload)
        type_ = foreground_submit_type(priority)
        deadline = time.monotonic() + timeout
        packet = request(type_, _text(function), _text(job_unique), data)

        def attempt(conn: GearmanConnection) -> bytes:
            return self._run_foreground(conn, packet, deadline, on_update)

        return self._with_failover(attempt, f"job {function!r}", timeout, deadline=deadline)

    def stream(
        self,
        function: str,
        payload: bytes | str,
        *,
        unique: str | None = None,
        priority: str = "normal",
        timeout: float = 60.0,
    ) -> Iterator[JobUpdate]:
        """Run a foreground job; yield its updates as they come, then a "complete" JobUpdate
        whose `data` is the result. Errors are raised as by `submit`. The job runs on a helper
        thread, which runs it to its end even when the iteration is left early."""
        updates: queue.SimpleQueue[JobUpdate | BaseException] = queue.SimpleQueue()

        def run() -> None:
            try:
                result = self.submit(function, payload, unique=unique, priority=priority,
                                     timeout=timeout, on_update=updates.put)  # fmt: skip
                updates.put(JobUpdate("complete", b"", result))
            except BaseException as exc:  # handed to the iterating thread
                updates.put(exc)

        threading.Thread(target=run, name=f"gearman-stream-{function}", daemon=True).start()
        while True:
            item = updates.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.kind == "complete":
                return

    def status(
        self,
        handle: bytes | str | None = None,
        *,
        unique: str | None = None,
        server: str | Endpoint | None = None,
    ) -> JobStatus:
        """Ask the server that holds a background job how it is: by `handle` (GET_STATUS) or
        by `unique` (GET_STATUS_UNIQUE; its `waiting` counts the foreground clients waiting).

        The server asked is `server` if given, else the one this Client submitted the job to,
        else every live server in turn until one knows the job. Prefer `unique` for a job that
        may have moved: a job a take-over drained into another gearmand keeps its unique but
        gets a new handle, and gearmands on one host hand out the same handles ("H:host:N").
        `known` False when no server asked knows the job (it finished, or never was there).
        """
        if (handle is None) == (unique is None):
            raise ValueError("give a job's handle or its unique (one of them)")
        key: bytes | str = unique if unique is not None else _bytes(handle)  # type: ignore[arg-type]
        with self._lock:
            held_by = self._held_by.get(key)
        if server is not None:
            targets = [server if isinstance(server, Endpoint) else Endpoint.parse(server)]
        else:
            targets = list(dict.fromkeys([*([held_by] if held_by else []), *self.servers()]))
        errors: list[str] = []
        for endpoint in targets:
            try:
                answer = self._on(endpoint, lambda conn: self._ask_status(conn, key))
            except (GearmanConnectionError, ProtocolError) as exc:
                errors.append(f"{endpoint}: {exc}")
                continue
            if answer.known or server is not None:
                return answer
        if errors and len(errors) == len(targets):
            raise NoServerError(f"job status: no server answered ({'; '.join(errors[-3:])})")
        return JobStatus(known=False, handle=key if isinstance(key, bytes) else None, unique=unique)

    def servers(self) -> list[Endpoint]:
        return self.source.servers()

    # Internals.

    def _run_foreground(
        self,
        conn: GearmanConnection,
        packet: object,
        deadline: float,
        on_update: Callable[[JobUpdate], object] | None = None,
    ) -> bytes:
        conn.read_timeout = max(0.001, min(self.read_timeout, deadline - time.monotonic()))
        conn.ensure_option("exceptions")  # WORK_EXCEPTION with the worker's text
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
            if not conn.wait_readable(min(remaining, LIVE_CHECK_EVERY)):
                # No word from the server for a while: a host that died answers nothing (no
                # RST). Once its node has left the live servers, run the job elsewhere.
                if conn.endpoint not in self.source.servers():
                    conn.close()
                    job = handle.decode(errors="replace")
                    raise GearmanConnectionError(f"{conn.endpoint} left the live servers while "
                                                 f"job {job} ran")  # fmt: skip
                continue
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
            if on_update is not None and answer.args and answer.args[0] == handle:
                update = job_update(answer)
                if update is not None:
                    on_update(update)

    def _with_failover(
        self,
        attempt: Callable[[GearmanConnection], T],
        what: str,
        retry_timeout: float,
        *,
        deadline: float | None = None,
        progress: Sized = (),
    ) -> T:
        """Run `attempt` on live servers in turn until one succeeds or time runs out.

        A failed attempt that made `progress` grow (a batch's acknowledged jobs) starts the
        `retry_timeout` over.
        """
        deadline = deadline if deadline is not None else time.monotonic() + retry_timeout
        errors: list[str] = []
        delay = 0.05
        while True:
            for endpoint in self._candidates():
                done = len(progress)
                try:
                    return self._on(endpoint, attempt)
                except GearmanServerError as exc:
                    if exc.code not in RETRYABLE_SERVER_ERRORS:
                        raise
                    errors.append(f"{endpoint}: {exc}")
                    self._mark_down(endpoint)
                except (GearmanConnectionError, ProtocolError) as exc:
                    errors.append(f"{endpoint}: {exc}")
                    self._drop(endpoint)
                    self._mark_down(endpoint)
                if len(progress) > done:
                    deadline = max(deadline, time.monotonic() + retry_timeout)
                    delay = 0.05
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
        with self._lock:
            gone = set(self._idle) - set(servers)
            if not servers:
                rotated = []
            else:
                self._turn = (self._turn + 1) % len(servers)
                rotated = servers[self._turn :] + servers[: self._turn]
        for endpoint in gone:
            self._drop(endpoint)
        now = time.monotonic()
        healthy = [s for s in rotated if self._down_until.get(s, 0.0) <= now]
        return healthy + [s for s in rotated if s not in healthy]

    def _on(self, endpoint: Endpoint, call: Callable[[GearmanConnection], T]) -> T:
        """`call(connection)` on a connection of the pool of `endpoint`, held by this thread
        alone. It goes back to the pool when the call returned or raised a job's or the
        server's answer (read in full); after anything else its state is unknown: closed."""
        with self._lock:
            idle = self._idle.get(endpoint)
            conn = idle.pop() if idle else None
        if conn is None:
            conn = GearmanConnection(
                endpoint, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
            )
        try:
            result = call(conn)
        except (JobFailedError, GearmanServerError):
            self._put_back(conn)
            raise
        except BaseException:
            conn.close()
            raise
        self._put_back(conn)
        return result

    def _put_back(self, conn: GearmanConnection) -> None:
        with self._lock:
            self._idle.setdefault(conn.endpoint, []).append(conn)

    def _drop(self, endpoint: Endpoint) -> None:
        """Close the idle connections to a server that failed or left."""
        with self._lock:
            conns = self._idle.pop(endpoint, [])
        for conn in conns:
            conn.close()

    def _mark_down(self, endpoint: Endpoint) -> None:
        log.info("gearmand %s failed; trying another server", endpoint)
        self._down_until[endpoint] = time.monotonic() + self.down_for
        if self.on_failover is not None:
            self.on_failover(endpoint)

    def _ask_status(self, conn: GearmanConnection, key: bytes | str) -> JobStatus:
        conn.read_timeout = self.read_timeout
        return conn.status(key) if isinstance(key, bytes) else conn.status_unique(key)

    def _remember(self, endpoint: Endpoint, handle: bytes, unique: str) -> None:
        with self._lock:
            held_by = self._held_by
            held_by[handle] = held_by[unique] = endpoint
            while len(held_by) > REMEMBERED_JOBS:
                held_by.popitem(last=False)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else _text(value)


def _fresh_uniques() -> Iterator[str]:
    """Endless UUID4 strings, made in blocks growing from 16 to 1,024."""
    block = 16
    while True:
        yield from new_uniques(block)
        block = min(2 * block, 1024)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


# Re-exported here (documented import path); the Worker uses the Client for retries.
from cluster.gearman.worker import Retry, Worker, WorkerJob  # noqa: E402
