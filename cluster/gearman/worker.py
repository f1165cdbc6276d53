"""A Gearman worker that registers on every live server and runs up to N jobs at a time.

    from cluster.gearman.client import Retry, Worker
    worker = Worker(zookeeper="127.0.0.1:2181", cluster="local", concurrency=4)  # or servers=[...]
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.register("resize", resize, timeout=30, retry=Retry(attempts=5, dead_letter="failed"))
    worker.work()            # blocks; SIGTERM or worker.stop() drains and returns

One loop thread owns the sockets (a `selectors` loop over a socket per server plus a wake-up
socketpair); handlers run on `concurrency` pool threads and hand their answers back to it
(with concurrency 1 and no timeout to watch, on the loop thread itself: no hand-off):
- on connect: CAN_DO for every function; the server counts as awake (it may have jobs);
- one GRAB_JOB_UNIQ per free slot (jobs running plus grabs unanswered <= concurrency) is
  sent to the awake servers, pipelined, so a Worker never holds a job it has no thread for;
- NO_JOB: PRE_SLEEP, and that server sleeps until it sends NOOP (no polling);
- JOB_ASSIGN_UNIQ: the job goes to a pool thread; WORK_COMPLETE when its handler returns;
  `job.send_status/send_data/send_warning` send progress while it runs;
- a handler that raises or overruns its timeout: see `Retry` (foreground jobs get
  WORK_EXCEPTION with the error's text, then WORK_FAIL); a timed-out handler's thread is
  replaced so that the slot is free again, and whatever it returns later is dropped;
- a lost or refused connection is retried with exponential backoff and jitter; gearmand puts
  the jobs this worker held on it back in its queue, and their late answers are dropped;
- `stop()` (or SIGTERM during `work()` on the main thread): no more grabs; the jobs in hand get
  `grace` seconds to finish; those that did not are failed back (WORK_FAIL, after their retry
  policy ran: gearmand deletes a background job it gets WORK_FAIL for, from its queue and its
  persistent store, so without a Retry such a job is gone and the Worker logs it as lost).
The socket handling is written here on top of `protocol.encode/decode` because the worker needs
one non-blocking-read loop over many servers, which GearmanConnection (blocking) does not offer.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import json
import logging
import queue
import random
import selectors
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, ProtocolError
from cluster.gearman.discovery import ServerSource, server_source
from cluster.gearman.protocol import (
    RECV_SIZE,
    Packet,
    PacketType,
    as_payload,
    decode,
    encode,
    request,
)

if TYPE_CHECKING:
    from cluster.gearman.client import Client

log = logging.getLogger(__name__)

_GRAB = encode(request(PacketType.GRAB_JOB_UNIQ))
_PRE_SLEEP = encode(request(PacketType.PRE_SLEEP))

IDLE_WAKEUP = 5.0
"""Longest select() wait: only a safety net, every event that matters wakes the loop."""
ATTEMPT_MARK = "/attempt-"
"""A retried job's unique is its first run's unique, this mark and the attempt number."""
MAX_UNIQUE = 63
"""Longest unique gearmand keeps (GEARMAN_MAX_UNIQUE_SIZE is 64 with the NUL)."""


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """A job handed to a handler. `send_status`, `send_data` and `send_warning` report progress
    to a foreground job's client while the handler runs (gearmand keeps the status of a
    background job for `Client.status`)."""

    handle: bytes
    function: str
    unique: str
    payload: bytes
    server: Endpoint
    report: Callable[[Packet], None] | None = field(default=None, repr=False, compare=False)

    @property
    def attempt(self) -> int:
        """Which run of the job this is: 1, or n for the unique `<first unique>/attempt-n`
        that a Retry resubmits it with."""
        return split_attempt(self.unique)[1]

    def send_status(self, numerator: int, denominator: int) -> None:
        self._send(
            PacketType.WORK_STATUS, str(int(numerator)).encode(), str(int(denominator)).encode()
        )

    def send_data(self, data: bytes | str) -> None:
        self._send(PacketType.WORK_DATA, _result(data))

    def send_warning(self, data: bytes | str) -> None:
        self._send(PacketType.WORK_WARNING, _result(data))

    def _send(self, type_: PacketType, *args: bytes) -> None:
        if self.report is not None:
            self.report(request(type_, self.handle, *args))


Handler = Callable[[WorkerJob], bytes | str | None]


@dataclass(frozen=True)
class Retry:
    """What happens to a background job whose handler raised or timed out.

    The job is run again up to `attempts` runs in all: after `backoff` seconds (doubling each
    time, at most `max_backoff`) it is submitted anew as a background job with the same
    function and payload and the unique `<first unique>/attempt-<n>` (`WorkerJob.attempt`),
    then the failed run is answered WORK_FAIL. While it waits the job stays with gearmand
    (running, on this worker's connection), so a worker that dies meanwhile loses nothing:
    gearmand queues it again. After the last attempt it goes to `dead_letter`: a callable
    `(job, error_text)`, or the name of a Gearman function that gets a background job whose
    payload is JSON {"function", "unique", "attempts", "error", "payload" (base64)}.
    Foreground jobs (a client waits: GET_STATUS_UNIQUE counts it) are never retried.
    """

    attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 300.0
    dead_letter: str | Callable[[WorkerJob, str], object] | None = None
    priority: str = "normal"

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("Retry needs attempts >= 1, backoff >= 0 and max_backoff >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the run after run `attempt`."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))


def split_attempt(unique: str) -> tuple[str, int]:
    """(first run's unique, attempt number) of a job's unique."""
    base, mark, number = unique.rpartition(ATTEMPT_MARK)
    if mark and number.isdigit():
        return base, int(number)
    return unique, 1


def next_unique(unique: str, attempt: int) -> str:
    """The unique of run `attempt` of the job whose first run had `unique`."""
    return _suffixed(unique, f"{ATTEMPT_MARK}{attempt}")


def _suffixed(unique: str, suffix: str) -> str:
    """`unique` + `suffix`, the unique shortened to a UUID5 of it where the whole would be
    longer than gearmand keeps."""
    if len(unique) + len(suffix) > MAX_UNIQUE:
        unique = str(uuid.uuid5(uuid.NAMESPACE_URL, unique))
    return unique + suffix


@dataclass(frozen=True, slots=True)
class _Registration:
    handler: Handler
    timeout: float | None
    retry: Retry | None


@dataclass(eq=False)
class _Server:
    endpoint: Endpoint
    sock: socket.socket | None = None
    buffer: bytearray = field(default_factory=bytearray)
    out: list[bytes] = field(default_factory=list)
    awake: bool = False
    grabs: int = 0
    """GRAB_JOB_UNIQs sent and not answered yet."""
    retry_at: float = 0.0
    backoff: float = 0.0


@dataclass(eq=False)
class _Run:
    """A job in this worker's hands, from JOB_ASSIGN to its final answer."""

    job: WorkerJob
    server: _Server
    sock: socket.socket
    """The connection it came on: its answers go there or nowhere."""
    registration: _Registration | None
    deadline: float | None
    state: str = "running"  # running -> settling (failed: retry policy) -> held -> done
    error: str = ""
    thread: int | None = None
    """The pool thread running its handler, once one does."""


class Worker:
    """Runs registered functions for jobs from all live servers of a cluster.

    `concurrency` jobs run at once on as many threads. `job_timeout` (seconds, None for none)
    bounds a handler unless `register` gives its own. `grace`: how long `stop()` lets the jobs
    in hand finish before it fails them back.
    """

    def __init__(
        self,
        servers: Iterable[str | Endpoint] | str | None = None,
        *,
        zookeeper: str | None = None,
        cluster: str = "local",
        client_id: str | None = None,
        concurrency: int = 1,
        job_timeout: float | None = None,
        grace: float = 30.0,
        connect_timeout: float = 1.0,
        io_timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        source: ServerSource | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.source = source or server_source(servers, zookeeper, cluster)
        self.client_id = client_id
        self.concurrency = concurrency
        self.job_timeout = job_timeout
        self.grace = grace
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.jobs_done = 0
        self._handlers: dict[str, _Registration] = {}
        self._new_functions: list[str] = []
        self._lock = threading.Lock()
        self._servers: dict[Endpoint, _Server] = {}
        self._turn = 0
        self._runs: set[_Run] = set()
        """Jobs that hold a slot: running, or failed and being settled."""
        self._outbox: list[tuple[_Run, list[Packet], bool]] = []
        """(run, packets, final) handed from pool threads to the loop thread."""
        self._held: list[tuple[float, int, _Run]] = []
        """Failed background jobs waiting for their retry (heap by time)."""
        self._sequence = itertools.count()
        self._pool: _Pool | None = None
        self._loop_thread: int | None = None
        self._client: Client | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._servers_changed = True
        self.source.add_listener(self._on_servers_changed)

    # Public API.

    def register(
        self,
        function: str,
        handler: Handler,
        *,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> None:
        """Run `handler(job)` for jobs of `function`; it returns the result (bytes, str or None).

        `timeout`: seconds before a running job is failed and its slot freed (default: the
        Worker's `job_timeout`). `retry`: what to do with a background job that failed (see
        Retry); without one it is answered WORK_FAIL, which makes gearmand delete it.
        May be called while `work()` runs (from any thread)."""
        if not function or "\0" in function:
            raise ValueError(f"bad function name {function!r}")
        with self._lock:
            if function not in self._handlers:
                self._new_functions.append(function)
            self._handlers[function] = _Registration(handler, timeout, retry)
        self._wake()

    def work(self, *, handle_signals: bool = True) -> int:
        """Serve jobs until `stop()`, then drain; return how many jobs this call finished.

        On the main thread with `handle_signals`, SIGTERM calls `stop()` while it runs."""
        done_before = self.jobs_done
        self._stopping = False
        self._loop_thread = threading.get_ident()
        self._pool = _Pool(self.concurrency)
        previous = None
        if handle_signals and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self.stop())
        try:
            while not self._stopping:
                self._step()
            self._drain()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            for server in list(self._servers.values()):
                self._disconnect(server, reason=None)
            self._pool.close()
        return self.jobs_done - done_before

    def stop(self, grace: float | None = None) -> None:
        """Make `work()` stop grabbing, give the jobs in hand `grace` seconds (default: the
        Worker's) and return (safe from threads and signal handlers)."""
        if grace is not None:
            self.grace = grace
        self._stopping = True
        self._wake()

    def close(self) -> None:
        self.stop()
        if self._client is not None:
            self._client.close()
        self.source.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def connected(self) -> list[Endpoint]:
        """Servers this worker is connected to now."""
        return [s.endpoint for s in self._servers.values() if s.sock is not None]

    # The loop.

    def _step(self, until: float | None = None) -> None:
        """One turn of the loop: wait for events at most until `until`."""
        if self._servers_changed:
            self._servers_changed = False
            self._sync_servers()
        with self._lock:
            new_functions, self._new_functions = self._new_functions, []
        if new_functions:
            for server in self._servers.values():
                if server.sock is not None:
                    server.out += [
                        encode(request(PacketType.CAN_DO, _text(f))) for f in new_functions
                    ]
                    server.awake = True  # it may have jobs for the new function already
        now = time.monotonic()
        timeout = IDLE_WAKEUP if until is None else max(0.0, until - now)
        for server in list(self._servers.values()):
            if server.sock is None:
                if now >= server.retry_at:
                    self._connect(server)
                if server.sock is None:
                    timeout = min(timeout, max(0.0, server.retry_at - now))
        timeout = min(timeout, self._tend(time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif key.data.sock is not None:
                self._on_readable(key.data)

    def _tend(self, now: float) -> float:
        """Hand out what pool threads answered, fail timed-out jobs, start due retries, grab
        for free slots and send; return how long the loop may sleep."""
        with self._lock:
            outbox, self._outbox = self._outbox, []
            overdue = [
                r for r in self._runs if r.deadline and r.deadline <= now and r.state == "running"
            ]
            for run in overdue:
                run.state = "settling"
            due = []
            while self._held and (self._held[0][0] <= now or self._stopping):
                due.append(heapq.heappop(self._held)[2])
                due[-1].state = "settling"
                self._runs.add(due[-1])
            deadlines = [r.deadline for r in self._runs if r.deadline and r.state == "running"]
            if self._held:
                deadlines.append(self._held[0][0])
        for run, packets, final in outbox:
            if final:
                self.jobs_done += 1
            if run.server.sock is run.sock:
                run.server.out += map(encode, packets)
            elif final:
                log.info(
                    "job %r finished after its connection was lost: answer dropped", run.job.handle
                )
        assert self._pool is not None
        for run in overdue:
            log.error(
                "job %r of %r: handler timed out; failing it", run.job.unique, run.job.function
            )
            if run.thread is not None:
                self._pool.replace(run.thread)  # it leaves the pool once its handler returns
            self._pool.submit(self._settle, run, "handler timed out")
        for run in due:
            self._pool.submit(self._resubmit, run)
        self._fill_slots()
        for server in list(self._servers.values()):
            if server.out and server.sock is not None:
                data, server.out = b"".join(server.out), []
                self._send_bytes(server, data)
        return max(0.0, min([IDLE_WAKEUP, *(d - now for d in deadlines)]))

    def _fill_slots(self) -> None:
        if self._stopping:
            return
        servers = [s for s in self._servers.values() if s.sock is not None]
        with self._lock:
            free = self.concurrency - len(self._runs)
        free -= sum(s.grabs for s in servers)
        awake = [s for s in servers if s.awake]
        if free <= 0 or not awake:
            return
        # One grab per free slot, pipelined, spread over the awake servers in turn.
        self._turn = (self._turn + 1) % len(awake)
        for n in range(free):
            server = awake[(self._turn + n) % len(awake)]
            server.grabs += 1
            server.out.append(_GRAB)

    def _drain(self) -> None:
        """After stop(): let the jobs in hand finish within `grace`, fail back the rest."""
        deadline = time.monotonic() + self.grace
        with self._lock:
            busy = bool(self._runs or self._held)
        if busy:
            log.info("worker stopping: waiting up to %.1fs for the jobs in hand", self.grace)
        while busy and time.monotonic() < deadline:
            self._step(deadline)
            with self._lock:
                busy = bool(self._runs or self._held)
        with self._lock:
            unfinished = [r for r in self._runs if r.state == "running"]
            for run in unfinished:
                run.state = "settling"
        for run in unfinished:
            log.error(
                "job %r of %r: not finished in the grace period", run.job.unique, run.job.function
            )
            self._settle(run, "the worker stopped before the job finished")
        settle_by = time.monotonic() + self.io_timeout
        while time.monotonic() < settle_by:  # settling ones (pool threads) send their answers
            self._tend(time.monotonic())
            with self._lock:
                if not any(r.state == "settling" for r in self._runs) and not self._outbox:
                    break
            self._step(settle_by)
        self._tend(time.monotonic())

    def _sync_servers(self) -> None:
        live = set(self.source.servers())
        for endpoint in set(self._servers) - live:
            log.info("gearmand %s left the live servers; disconnecting", endpoint)
            self._disconnect(self._servers.pop(endpoint), reason=None)
        for endpoint in sorted(live - set(self._servers)):
            self._servers[endpoint] = _Server(endpoint)

    def _connect(self, server: _Server) -> None:
        try:
            sock = socket.create_connection(
                (server.endpoint.host, server.endpoint.port), timeout=self.connect_timeout
            )
        except OSError as exc:
            self._schedule_retry(server, f"cannot connect: {exc}")
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self.io_timeout)  # bounds sendall; recv runs only once readable
        server.sock, server.awake, server.grabs = sock, True, 0
        server.buffer.clear()
        self._selector.register(sock, selectors.EVENT_READ, server)
        with self._lock:
            functions = sorted(self._handlers)
            self._new_functions.clear()  # every function is announced just below
        packets = []
        if self.client_id:
            packets.append(request(PacketType.SET_CLIENT_ID, _text(self.client_id)))
        packets += [request(PacketType.CAN_DO, _text(f)) for f in functions]
        server.out = [encode(p) for p in packets]
        log.info("worker connected to gearmand %s", server.endpoint)

    def _on_readable(self, server: _Server) -> None:
        assert server.sock is not None
        try:
            chunk = server.sock.recv(RECV_SIZE)
        except OSError as exc:
            self._schedule_retry(server, f"receive failed: {exc}")
            return
        if not chunk:
            self._schedule_retry(server, "the server closed the connection")
            return
        server.buffer += chunk
        server.backoff = 0.0  # it answers: the next failure starts the backoff over
        while server.sock is not None:
            try:
                decoded = decode(server.buffer)
            except ProtocolError as exc:
                self._schedule_retry(server, str(exc))
                return
            if decoded is None:
                return
            packet, size = decoded
            del server.buffer[:size]
            self._on_packet(server, packet.type, packet.args)

    def _on_packet(self, server: _Server, type_: PacketType, args: tuple[bytes, ...]) -> None:
        if type_ is PacketType.NO_JOB:
            server.grabs = max(0, server.grabs - 1)
            server.awake = False
            if not server.grabs:  # gearmand sends NOOP at once if jobs came meanwhile
                server.out.append(_PRE_SLEEP)
        elif type_ is PacketType.NOOP:
            server.awake = True
        elif type_ is PacketType.JOB_ASSIGN_UNIQ:
            handle, function, unique, payload = args
            self._start(server, handle, _str(function), _str(unique), payload)
        elif type_ is PacketType.JOB_ASSIGN:
            handle, function, payload = args
            self._start(server, handle, _str(function), "", payload)
        elif type_ is PacketType.ERROR:
            code, text = _str(args[0]), _str(args[1])
            if code == "JOB_NOT_FOUND":  # an answer for a job gearmand ended already
                log.debug("gearmand %s: %s", server.endpoint, text)
            else:
                self._schedule_retry(server, f"server error {code}: {text}")
        # Anything else (ECHO_RES, OPTION_RES...) needs no action.

    def _start(
        self, server: _Server, handle: bytes, function: str, unique: str, payload: bytes
    ) -> None:
        server.grabs = max(0, server.grabs - 1)
        assert server.sock is not None and self._pool is not None

        def report(packet: Packet) -> None:  # `run` is bound below, before the handler runs
            self._report(run, packet)

        job = WorkerJob(handle, function, unique, payload, server.endpoint, report)
        with self._lock:
            registration = self._handlers.get(function)
            timeout = (
                registration.timeout if registration and registration.timeout else self.job_timeout
            )
            deadline = time.monotonic() + timeout if timeout else None
            run = _Run(job, server, server.sock, registration, deadline)
            self._runs.add(run)
        if registration is None:
            log.warning("job %r for unregistered function %r: failing it", handle, function)
            self._finish(run, [request(PacketType.WORK_FAIL, handle)])
        elif self.concurrency == 1 and deadline is None:
            self._execute(run)  # nothing to watch it for: no thread hand-off (the fast path)
        else:
            self._pool.submit(self._execute, run)

    # On pool threads.

    def _execute(self, run: _Run) -> None:
        assert run.registration is not None
        with self._lock:
            if run.state != "running":
                return  # timed out while it waited for a thread
            run.thread = threading.get_ident()
        try:
            answer = [
                request(
                    PacketType.WORK_COMPLETE,
                    run.job.handle,
                    _result(run.registration.handler(run.job)),
                )
            ]
        except Exception as exc:
            with self._lock:
                if run.state != "running":
                    return  # timed out meanwhile: settled already
                run.state = "settling"
            log.warning(
                "handler for %r failed on job %r: %s",
                run.job.function,
                run.job.unique,
                exc,
                exc_info=True,
            )
            self._settle(run, f"{type(exc).__name__}: {exc}")
        else:
            self._finish(run, answer, only_running=True)  # not if it timed out meanwhile

    def _settle(self, run: _Run, error: str) -> None:
        """A failed job: WORK_EXCEPTION + WORK_FAIL for a foreground one; a background one
        goes to its Retry (resubmitted, now or after the backoff; or dead-lettered)."""
        job, retry = run.job, run.registration.retry if run.registration else None
        run.error = error
        fail = [
            request(PacketType.WORK_EXCEPTION, job.handle, error.encode()),
            request(PacketType.WORK_FAIL, job.handle),
        ]
        if retry is None or not job.unique:
            if retry is not None:
                log.error("job %r of %r has no unique: cannot retry it", job.handle, job.function)
            self._finish(run, fail)
            return
        try:
            waiting = self._retry_client().status(unique=job.unique, server=job.server).waiting
        except GearctlError as exc:
            log.warning(
                "job %r: cannot ask %s whether a client waits (%s); failing it",
                job.unique,
                job.server,
                exc,
            )
            self._finish(run, fail)
            return
        if waiting:
            self._finish(run, fail)
            return
        delay = retry.delay(job.attempt)
        if delay > 0 and self._hold(run, delay):
            log.info("job %r of %r failed (%s): next run in %.1fs", job.unique, job.function,
                     error, delay)  # fmt: skip
        else:
            self._resubmit(run)

    def _hold(self, run: _Run, delay: float) -> bool:
        """Keep a failed job (unanswered: gearmand still has it) for `delay` seconds, then hand
        it on; False (not held) once the worker is stopping."""
        with self._lock:
            if self._stopping:
                return False
            run.state = "held"
            self._runs.discard(run)
            heapq.heappush(self._held, (time.monotonic() + delay, next(self._sequence), run))
        self._wake()
        return True

    def _forget(self, run: _Run) -> None:
        """Let go of a job without answering it (gearmand has it, or gets it back)."""
        with self._lock:
            run.state = "done"
            self._runs.discard(run)

    def _resubmit(self, run: _Run) -> None:
        """Submit the next run of a failed background job (or dead-letter it), then WORK_FAIL
        this one. If no server takes it, this run stays unanswered and is tried again later
        (after stop(): gearmand queues it again when the worker disconnects): never lost."""
        job, retry = run.job, run.registration.retry  # type: ignore[union-attr]
        assert retry is not None
        if run.server.sock is not run.sock:  # gearmand queued it again when the connection broke
            log.info("job %r: its connection broke while it waited; gearmand has it", job.unique)
            self._forget(run)
            return
        base, attempt = split_attempt(job.unique)
        client = self._retry_client()
        try:
            if attempt < retry.attempts:
                client.submit_background(
                    job.function,
                    job.payload,
                    unique=next_unique(base, attempt + 1),
                    priority=retry.priority,
                )
            elif callable(retry.dead_letter):
                retry.dead_letter(job, run.error)
            elif retry.dead_letter:
                client.submit_background(
                    retry.dead_letter,
                    _dead_letter_payload(job, attempt, run.error),
                    unique=_suffixed(base, "/dead"),
                )
            else:
                log.error(
                    "job %r of %r failed %d times: dropped (no dead letter)",
                    base,
                    job.function,
                    attempt,
                )
        except Exception:
            log.exception("job %r of %r: cannot hand it on yet", job.unique, job.function)
            if not self._hold(run, max(retry.backoff, 1.0)):
                self._forget(run)  # stopping: left to gearmand, which queues it again
            return
        self._finish(run, [request(PacketType.WORK_FAIL, job.handle)])

    def _finish(self, run: _Run, packets: list[Packet], *, only_running: bool = False) -> None:
        with self._lock:
            if run.state == "done" or (only_running and run.state != "running"):
                return
            run.state = "done"
            self._runs.discard(run)
            self._outbox.append((run, packets, True))
        if threading.get_ident() != self._loop_thread:
            self._wake()

    def _report(self, run: _Run, packet: Packet) -> None:
        if threading.get_ident() == self._loop_thread:  # a handler run inline: send now
            if run.server.sock is run.sock:
                self._send_bytes(run.server, encode(packet))
            return
        with self._lock:
            if run.state != "running":
                return
            self._outbox.append((run, [packet], False))
        self._wake()

    def _retry_client(self) -> Client:
        from cluster.gearman.client import Client  # the client module imports this one

        with self._lock:
            if self._client is None:
                self._client = Client(source=self.source, retry_timeout=self.io_timeout)
            return self._client

    # Connections.

    def _send_bytes(self, server: _Server, data: bytes) -> None:
        assert server.sock is not None
        try:
            server.sock.sendall(data)
        except OSError as exc:
            self._schedule_retry(server, f"send failed: {exc}")

    def _schedule_retry(self, server: _Server, reason: str) -> None:
        self._disconnect(server, reason)
        server.backoff = min(self.max_backoff, max(self.min_backoff, server.backoff * 2))
        server.retry_at = time.monotonic() + server.backoff * random.uniform(0.5, 1.0)

    def _disconnect(self, server: _Server, reason: str | None) -> None:
        if server.sock is None:
            return
        if reason:
            log.warning("gearmand %s: %s; reconnecting with backoff", server.endpoint, reason)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(server.sock)
        server.sock.close()
        server.sock = None
        server.awake, server.grabs = False, 0
        server.buffer.clear()
        server.out.clear()

    def _on_servers_changed(self) -> None:
        # Called on kazoo's thread: only set a flag and wake the loop.
        self._servers_changed = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")


class _Pool:
    """Threads running submitted calls. `replace(thread)` adds a thread for one that hangs in a
    handler; that one leaves the pool when its call returns, so the pool shrinks back."""

    def __init__(self, size: int) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._retiring: set[int] = set()
        for _ in range(size):
            self._add()

    def submit(self, call: Callable[..., object], *args: Any) -> None:
        self._tasks.put((call, args))

    def replace(self, thread: int) -> None:
        with self._lock:
            self._retiring.add(thread)
        self._add()

    def close(self) -> None:
        """Let every thread leave once the queued calls ran (hung ones leave when they return)."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._tasks.put(None)

    def _add(self) -> None:
        with self._lock:
            self._threads += 1
        threading.Thread(target=self._serve, name="gearman-worker-job", daemon=True).start()

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            call, args = task
            try:
                call(*args)
            except Exception:
                log.exception("worker pool call %r failed", call)
            with self._lock:
                if threading.get_ident() in self._retiring:
                    self._retiring.discard(threading.get_ident())
                    self._threads -= 1
                    return
        with self._lock:
            self._threads -= 1


def _dead_letter_payload(job: WorkerJob, attempts: int, error: str) -> bytes:
    return json.dumps(
        {
            "function": job.function,
            "unique": split_attempt(job.unique)[0],
            "attempts": attempts,
            "error": error,
            "payload": base64.b64encode(job.payload).decode(),
        }
    ).encode()


def _result(value: bytes | str | None) -> bytes:
    return b"" if value is None else as_payload(value)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")
