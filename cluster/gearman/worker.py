"""A Gearman worker that registers on every live server and sleeps until one has work.

    from cluster.gearman.client import Worker
    worker = Worker(zookeeper="127.0.0.1:2181", cluster="local")  # or Worker(servers=[...])
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.work()            # blocks; worker.stop() from another thread or a signal handler

One thread, one `selectors` loop over a socket per server plus a wake-up socketpair:
- on connect: CAN_DO for every function, then GRAB_JOB_UNIQ;
- NO_JOB: PRE_SLEEP, and the connection sleeps until the server sends NOOP (no polling);
- JOB_ASSIGN_UNIQ: run the handler, WORK_COMPLETE (or WORK_FAIL if it raised), grab again;
- a lost or refused connection is retried with exponential backoff and jitter;
- the server list comes from `cluster.gearman.discovery`: with ZooKeeper, servers that join or turn
  live are connected and those that leave are dropped, as the watches report them.
The socket handling is written here on top of `protocol.encode/decode` because the worker needs
one non-blocking-read loop over many servers, which GearmanConnection (blocking) does not offer.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.endpoint import Endpoint
from cluster.errors import ProtocolError
from cluster.gearman.discovery import ServerSource, server_source
from cluster.gearman.protocol import RECV_SIZE, PacketType, decode, encode, request

log = logging.getLogger(__name__)

IDLE_WAKEUP = 5.0
"""Longest select() wait: only a safety net, every event that matters wakes the loop."""


@dataclass(frozen=True, slots=True)
class WorkerJob:
    handle: bytes
    function: str
    unique: str
    payload: bytes
    server: Endpoint


Handler = Callable[[WorkerJob], bytes | str | None]


@dataclass(eq=False)
class _Server:
    endpoint: Endpoint
    sock: socket.socket | None = None
    buffer: bytearray = field(default_factory=bytearray)
    sleeping: bool = False
    retry_at: float = 0.0
    backoff: float = 0.0


class Worker:
    """Runs registered functions for jobs from all live servers of a cluster."""

    def __init__(
        self,
        servers: Iterable[str | Endpoint] | str | None = None,
        *,
        zookeeper: str | None = None,
        cluster: str = "local",
        client_id: str | None = None,
        connect_timeout: float = 1.0,
        io_timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        source: ServerSource | None = None,
    ) -> None:
        self.source = source or server_source(servers, zookeeper, cluster)
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.jobs_done = 0
        self._handlers: dict[str, Handler] = {}
        self._new_functions: list[str] = []
        self._lock = threading.Lock()
        self._servers: dict[Endpoint, _Server] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._servers_changed = True
        self.source.add_listener(self._on_servers_changed)

    # Public API.

    def register(self, function: str, handler: Handler) -> None:
        """Run `handler(job)` for jobs of `function`; it returns the result (bytes, str or None).

        May be called while `work()` runs (from any thread)."""
        if not function or "\0" in function:
            raise ValueError(f"bad function name {function!r}")
        with self._lock:
            if function not in self._handlers:
                self._new_functions.append(function)
            self._handlers[function] = handler
        self._wake()

    def work(self) -> int:
        """Serve jobs until `stop()`; return how many jobs this call ran."""
        done_before = self.jobs_done
        self._stopping = False
        try:
            while not self._stopping:
                self._step()
        finally:
            for server in list(self._servers.values()):
                self._disconnect(server, reason=None)
        return self.jobs_done - done_before

    def stop(self) -> None:
        """Make `work()` return after the job in hand (safe from threads and signal handlers)."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        self.stop()
        self.source.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def connected(self) -> list[Endpoint]:
        """Servers this worker is connected to now."""
        return [s.endpoint for s in self._servers.values() if s.sock is not None]

    # The loop.

    def _step(self) -> None:
        if self._servers_changed:
            self._servers_changed = False
            self._sync_servers()
        with self._lock:
            new_functions, self._new_functions = self._new_functions, []
        if new_functions:
            for server in self._servers.values():
                if server.sock is not None:
                    self._send(
                        server, [request(PacketType.CAN_DO, _text(f)) for f in new_functions]
                    )
                    if server.sleeping:  # it may have jobs for the new function already
                        self._grab(server)
        now = time.monotonic()
        timeout = IDLE_WAKEUP
        for server in list(self._servers.values()):
            if server.sock is None:
                if now >= server.retry_at:
                    self._connect(server)
                if server.sock is None:
                    timeout = min(timeout, max(0.0, server.retry_at - now))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif key.data.sock is not None:
                self._on_readable(key.data)
            if self._stopping:
                return

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
        server.sock, server.sleeping = sock, False
        server.buffer.clear()
        self._selector.register(sock, selectors.EVENT_READ, server)
        with self._lock:
            functions = sorted(self._handlers)
            self._new_functions.clear()  # every function is announced just below
        packets = []
        if self.client_id:
            packets.append(request(PacketType.SET_CLIENT_ID, _text(self.client_id)))
        packets += [request(PacketType.CAN_DO, _text(f)) for f in functions]
        packets.append(request(PacketType.GRAB_JOB_UNIQ))
        if self._send(server, packets):
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
            server.sleeping = True
            self._send(server, [request(PacketType.PRE_SLEEP)])
        elif type_ is PacketType.NOOP:
            if server.sleeping:
                self._grab(server)
        elif type_ is PacketType.JOB_ASSIGN_UNIQ:
            handle, function, unique, payload = args
            self._run(
                server, WorkerJob(handle, _str(function), _str(unique), payload, server.endpoint)
            )
        elif type_ is PacketType.JOB_ASSIGN:
            handle, function, payload = args
            self._run(server, WorkerJob(handle, _str(function), "", payload, server.endpoint))
        elif type_ is PacketType.ERROR:
            self._schedule_retry(server, f"server error {_str(args[0])}: {_str(args[1])}")
        # Anything else (ECHO_RES, OPTION_RES...) needs no action.

    def _run(self, server: _Server, job: WorkerJob) -> None:
        with self._lock:
            handler = self._handlers.get(job.function)
        answer: list = []
        if handler is None:
            log.warning("job %r for unregistered function %r: failing it", job.handle, job.function)
            answer.append(request(PacketType.WORK_FAIL, job.handle))
        else:
            try:
                result = handler(job)
            except Exception:
                log.exception("handler for %r failed on job %r", job.function, job.unique)
                answer.append(request(PacketType.WORK_FAIL, job.handle))
            else:
                answer.append(request(PacketType.WORK_COMPLETE, job.handle, _result(result)))
        self.jobs_done += 1
        server.sleeping = False
        answer.append(request(PacketType.GRAB_JOB_UNIQ))
        self._send(server, answer)

    def _grab(self, server: _Server) -> None:
        server.sleeping = False
        self._send(server, [request(PacketType.GRAB_JOB_UNIQ)])

    def _send(self, server: _Server, packets: list) -> bool:
        if server.sock is None:
            return False
        try:
            server.sock.sendall(b"".join(encode(p) for p in packets))
        except OSError as exc:
            self._schedule_retry(server, f"send failed: {exc}")
            return False
        return True

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
        server.sleeping = False
        server.buffer.clear()

    def _on_servers_changed(self) -> None:
        # Called on kazoo's thread: only set a flag and wake the loop.
        self._servers_changed = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")


def _result(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")
