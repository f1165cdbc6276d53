"""Gearman binary protocol: packet framing and a blocking client/worker connection.

Framing follows the public protocol document (gearman.org/protocol): a 12-byte header (magic
`\\0REQ` or `\\0RES`, big-endian type, big-endian data size) then the data, which is the packet's
arguments joined by NUL. Each type has a fixed number of arguments; only the last one may contain
NUL bytes.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from itertools import accumulate, islice

from cluster.endpoint import Endpoint
from cluster.errors import (
    GearctlError,
    GearmanConnectionError,
    GearmanServerError,
    ProtocolError,
)

HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size
MAX_PACKET_SIZE = 64 * 1024 * 1024
"""Largest data size `decode` accepts; a bigger declared size means a corrupt or hostile peer."""
RECV_SIZE = 256 * 1024
BATCH_BYTES = 1024 * 1024
"""A pipelined batch is sent once it holds this many bytes, whatever its job count."""


class Magic(bytes, Enum):
    REQ = b"\0REQ"
    RES = b"\0RES"


class PacketType(IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


T = PacketType
ARG_COUNTS: dict[PacketType, int] = {
    T.CAN_DO: 1,  # function
    T.CANT_DO: 1,  # function
    T.RESET_ABILITIES: 0,
    T.PRE_SLEEP: 0,
    T.NOOP: 0,
    T.SUBMIT_JOB: 3,  # function, unique, payload (same for every SUBMIT_JOB_* below)
    T.JOB_CREATED: 1,  # handle
    T.GRAB_JOB: 0,
    T.NO_JOB: 0,
    T.JOB_ASSIGN: 3,  # handle, function, payload
    T.WORK_STATUS: 3,  # handle, numerator, denominator
    T.WORK_COMPLETE: 2,  # handle, data
    T.WORK_FAIL: 1,  # handle
    T.GET_STATUS: 1,  # handle
    T.ECHO_REQ: 1,  # payload
    T.ECHO_RES: 1,  # payload
    T.SUBMIT_JOB_BG: 3,
    T.ERROR: 2,  # code, text
    T.STATUS_RES: 5,  # handle, known, running, numerator, denominator
    T.SUBMIT_JOB_HIGH: 3,
    T.SET_CLIENT_ID: 1,  # client id
    T.CAN_DO_TIMEOUT: 2,  # function, timeout
    T.ALL_YOURS: 0,
    T.WORK_EXCEPTION: 2,  # handle, data
    T.OPTION_REQ: 1,  # option name
    T.OPTION_RES: 1,  # option name
    T.WORK_DATA: 2,  # handle, data
    T.WORK_WARNING: 2,  # handle, data
    T.GRAB_JOB_UNIQ: 0,
    T.JOB_ASSIGN_UNIQ: 4,  # handle, function, unique, payload
    T.SUBMIT_JOB_HIGH_BG: 3,
    T.SUBMIT_JOB_LOW: 3,
    T.SUBMIT_JOB_LOW_BG: 3,
    T.SUBMIT_JOB_SCHED: 8,  # function, unique, minute, hour, mday, month, wday, payload
    T.SUBMIT_JOB_EPOCH: 4,  # function, unique, epoch, payload
    T.SUBMIT_REDUCE_JOB: 4,  # function, unique, reducer, payload
    T.SUBMIT_REDUCE_JOB_BACKGROUND: 4,
    T.GRAB_JOB_ALL: 0,
    T.JOB_ASSIGN_ALL: 5,  # handle, function, unique, reducer, payload
    T.GET_STATUS_UNIQUE: 1,  # unique
    T.STATUS_RES_UNIQUE: 6,  # unique, known, running, numerator, denominator, waiting clients
}
del T
_RES = Magic.RES.value
_SMALL_CREATED = HEADER.pack(_RES, PacketType.JOB_CREATED, 0)[:-1]
"""A JOB_CREATED header up to its last byte: the packet's size if the handle is under 256 bytes."""
_MAGICS = {magic.value: magic for magic in Magic}
_TYPES = {int(type_): type_ for type_ in PacketType}


@dataclass(frozen=True, slots=True)
class Packet:
    magic: Magic
    type: PacketType
    args: tuple[bytes, ...] = ()


def request(type_: PacketType, *args: bytes) -> Packet:
    return Packet(Magic.REQ, type_, args)


def encode(packet: Packet) -> bytes:
    """Frame a packet; raise ProtocolError if its arguments do not fit its type."""
    expected = ARG_COUNTS[packet.type]
    if len(packet.args) != expected:
        raise ProtocolError(
            f"{packet.type.name} takes {expected} arguments, got {len(packet.args)}"
        )
    if any(b"\0" in arg for arg in packet.args[:-1]):
        raise ProtocolError(f"{packet.type.name}: only the last argument may contain NUL bytes")
    data = b"\0".join(packet.args)
    if len(data) > MAX_PACKET_SIZE:
        raise ProtocolError(f"{packet.type.name}: {len(data)} bytes exceed {MAX_PACKET_SIZE}")
    return HEADER.pack(packet.magic.value, packet.type, len(data)) + data


def decode(buffer: bytes | bytearray | memoryview) -> tuple[Packet, int] | None:
    """Decode the packet at the start of `buffer`: (packet, bytes consumed), or None if incomplete.

    Raises ProtocolError for bad magic, an unknown type, a size above MAX_PACKET_SIZE or a
    wrong number of arguments. Header errors are raised as soon as the 12 header bytes arrive.
    """
    if len(buffer) < HEADER_SIZE:
        return None
    raw_magic, raw_type, size = HEADER.unpack_from(buffer)
    magic = _MAGICS.get(raw_magic)
    if magic is None:
        raise ProtocolError(f"bad packet magic {raw_magic!r} (expected \\0REQ or \\0RES)")
    type_ = _TYPES.get(raw_type)
    if type_ is None:
        raise ProtocolError(f"unknown packet type {raw_type}")
    if size > MAX_PACKET_SIZE:
        raise ProtocolError(
            f"{type_.name} declares {size} bytes, above the {MAX_PACKET_SIZE} limit"
        )
    end = HEADER_SIZE + size
    if len(buffer) < end:
        return None
    data = bytes(buffer[HEADER_SIZE:end])
    expected = ARG_COUNTS[type_]
    args = tuple(data.split(b"\0", expected - 1)) if expected else ()
    if len(args) != expected or (not expected and data):
        raise ProtocolError(
            f"{type_.name} must carry {expected} arguments; got {size} bytes: {data[:80]!r}"
        )
    return Packet(magic, type_, args), end


class Priority(StrEnum):
    """Job priority; `flags` is how gearmand's libmemcached queue stores it."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def flags(self) -> int:
        return _FLAGS[self]

    @classmethod
    def from_flags(cls, flags: int) -> Priority:
        """The priority gearmand stored as memcached `flags`; ValueError for other flags."""
        priority = _BY_FLAGS.get(flags)
        if priority is None:
            raise ValueError(f"memcached flags {flags} are no gearmand priority (0, 1 or 2)")
        return priority

    @classmethod
    def parse(cls, value: str | Priority) -> Priority:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"priority {value!r} is not one of high, normal, low") from None


_FLAGS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
_BY_FLAGS = {flags: priority for priority, flags in _FLAGS.items()}
_BACKGROUND: dict[str, PacketType] = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH_BG,
    Priority.NORMAL: PacketType.SUBMIT_JOB_BG,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW_BG,
}
_FOREGROUND: dict[str, PacketType] = {
    Priority.HIGH: PacketType.SUBMIT_JOB_HIGH,
    Priority.NORMAL: PacketType.SUBMIT_JOB,
    Priority.LOW: PacketType.SUBMIT_JOB_LOW,
}


def background_submit_type(priority: str | Priority) -> PacketType:
    # Priority is a StrEnum: "high" and Priority.HIGH are the same dict key.
    type_ = _BACKGROUND.get(priority)
    return type_ if type_ is not None else _BACKGROUND[Priority.parse(priority)]


def foreground_submit_type(priority: str | Priority) -> PacketType:
    type_ = _FOREGROUND.get(priority)
    return type_ if type_ is not None else _FOREGROUND[Priority.parse(priority)]


Refusal = tuple[int, str, str]
"""(index of the job in its batch, ERROR code, ERROR text)."""


def _batch_summary(handles: Sequence[bytes | None]) -> str:
    acknowledged = sum(handle is not None for handle in handles)
    refused = len(handles) - acknowledged
    return f"{acknowledged} jobs of the batch acknowledged, {refused} refused"


class BatchSubmitError(GearmanServerError):
    """gearmand refused some jobs of a pipelined batch with ERROR and acknowledged the others.

    gearmand (1.1.20, measured) goes on after an ERROR: every submit gets exactly one answer, in
    order. `handles` has one entry per job of the batch: its handle, or None where it was
    refused; `refusals` are (index, code, text) of the refused ones. `code` and `text` are the
    first refusal's. Every answer was read: the connection stays open and in step.
    """

    def __init__(self, refusals: list[Refusal], handles: list[bytes | None]) -> None:
        _, code, text = refusals[0]
        super().__init__(code, text)
        self.refusals = refusals
        self.handles = handles
        self.args = (f"{self.args[0]} ({_batch_summary(handles)})",)

    @property
    def acknowledged(self) -> int:
        return sum(handle is not None for handle in self.handles)

    @property
    def refused(self) -> list[int]:
        """Indices of the refused jobs, in order."""
        return [index for index, _, _ in self.refusals]


class BatchConnectionError(GearmanConnectionError):
    """The connection failed during a pipelined batch (closed, reset, timed out or garbled; it
    is closed now). `handles` are the answers read before that, in order, one per job: a handle
    for an acknowledged job, None for one gearmand refused (`refusals`, as in BatchSubmitError).
    Any job after them may or may not have been stored."""

    def __init__(
        self, message: str, handles: list[bytes | None], refusals: list[Refusal] | None = None
    ) -> None:
        super().__init__(f"{message} ({_batch_summary(handles)} before that)")
        self.handles = handles
        self.refusals = refusals or []

    @property
    def acknowledged(self) -> int:
        return sum(handle is not None for handle in self.handles)


class JobFailedError(GearctlError):
    """A foreground job ended with WORK_FAIL or WORK_EXCEPTION (`data` holds the exception)."""

    def __init__(self, handle: bytes, data: bytes | None = None) -> None:
        detail = f": {data.decode(errors='replace')}" if data is not None else ""
        super().__init__(f"job {handle.decode(errors='replace')} failed{detail}")
        self.handle = handle
        self.data = data


class JobExceptionError(JobFailedError):
    """A foreground job ended with WORK_EXCEPTION: `text` is what the worker reported."""

    @property
    def text(self) -> str:
        return (self.data or b"").decode(errors="replace")


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """What a worker reported about a running foreground job.

    `kind` is "data" or "warning" (`data` set), "status" (`numerator`, `denominator`), or, as
    the last update of `Client.stream`, "complete" (`data` is the result)."""

    kind: str
    handle: bytes
    data: bytes = b""
    numerator: int = 0
    denominator: int = 0


_UPDATE_KINDS = {PacketType.WORK_DATA: "data", PacketType.WORK_WARNING: "warning"}


def job_update(packet: Packet) -> JobUpdate | None:
    """The progress a WORK_DATA, WORK_WARNING or WORK_STATUS packet carries; None otherwise."""
    if packet.type is PacketType.WORK_STATUS:
        handle, numerator, denominator = packet.args
        return JobUpdate("status", handle, numerator=_int(numerator), denominator=_int(denominator))
    kind = _UPDATE_KINDS.get(packet.type)
    return JobUpdate(kind, *packet.args) if kind else None


def job_result(packet: Packet, handle: bytes) -> bytes | None:
    """What an answer means for foreground job `handle`: its result on WORK_COMPLETE,
    JobFailedError on WORK_FAIL, JobExceptionError on WORK_EXCEPTION, None for progress
    packets or other jobs. (gearmand 1.1 turns WORK_EXCEPTION into a WORK_FAIL whose handle
    ends with a NUL for clients that did not ask for the "exceptions" option.)"""
    if not packet.args:
        return None
    if packet.type is PacketType.WORK_FAIL:
        if packet.args[0].rstrip(b"\0") == handle:
            raise JobFailedError(handle)
        return None
    if packet.args[0] != handle:
        return None
    if packet.type is PacketType.WORK_COMPLETE:
        return packet.args[1]
    if packet.type is PacketType.WORK_EXCEPTION:
        raise JobExceptionError(handle, packet.args[1])
    return None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job as the server that holds it reports it (GET_STATUS or GET_STATUS_UNIQUE).

    `known` False: that server has no such job (it finished, failed, or never was there).
    `waiting` (by unique only): how many foreground clients wait for it; 0 for a background job.
    """

    known: bool
    running: bool = False
    numerator: int = 0
    denominator: int = 0
    handle: bytes | None = None
    unique: str | None = None
    waiting: int | None = None
    server: Endpoint | None = None


def job_status(packet: Packet, server: Endpoint) -> JobStatus:
    """The JobStatus a STATUS_RES or STATUS_RES_UNIQUE packet reports."""
    if packet.type is PacketType.STATUS_RES:
        handle, known, running, numerator, denominator = packet.args
        return JobStatus(
            known == b"1", running == b"1", _int(numerator), _int(denominator), handle,
            server=server,
        )  # fmt: skip
    unique, known, running, numerator, denominator, waiting = packet.args
    return JobStatus(
        known == b"1", running == b"1", _int(numerator), _int(denominator),
        unique=_str(unique), waiting=_int(waiting), server=server,
    )  # fmt: skip


def _int(value: bytes) -> int:
    """A decimal field as gearmand sends it (status numbers); 0 when it is not one."""
    try:
        return int(value.rstrip(b"\0") or b"0")
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class JobAssignment:
    handle: bytes
    function: str
    unique: str
    payload: bytes


def _text(value: str) -> bytes:
    # surrogateescape: names read from a peer as str go back out byte for byte.
    return value.encode("utf-8", "surrogateescape")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class GearmanConnection:
    """A blocking connection to one gearmand, usable as a client and as a minimal worker.

    Connects lazily on first use. Every socket operation is bounded: `connect_timeout` for the
    TCP connect, `read_timeout` for each send and for each `receive()` as a whole. Any socket
    failure closes the connection and raises GearmanConnectionError; the next call reconnects
    and re-registers the functions given to `can_do`.
    """

    def __init__(
        self, endpoint: Endpoint, *, connect_timeout: float = 2.0, read_timeout: float = 5.0
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._offset = 0
        self._abilities: set[str] = set()
        self._options: set[str] = set()
        """Options (OPTION_REQ) the server accepted on the current TCP connection."""

    def __enter__(self) -> GearmanConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout
            )
        except OSError as exc:
            raise GearmanConnectionError(
                f"cannot connect to gearmand at {self.endpoint}: {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)
        self._sock = sock
        self._buffer.clear()
        self._offset = 0
        self._options.clear()
        if self._abilities:
            self.send_many(request(PacketType.CAN_DO, _text(f)) for f in sorted(self._abilities))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, packet: Packet) -> None:
        self._send_bytes(encode(packet))

    def send_many(self, packets: Iterable[Packet]) -> None:
        """Send packets with one sendall."""
        self._send_bytes(b"".join(map(encode, packets)))

    def _send_bytes(self, data: bytes) -> None:
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._read_arrived()
            self.close()
            raise GearmanConnectionError(
                f"sending to gearmand at {self.endpoint} failed: {exc}"
            ) from exc

    def _read_arrived(self) -> None:
        """Buffer the bytes that had arrived when a send failed, without waiting for more: a
        pipelined batch still counts the answers among them as acknowledgements."""
        assert self._sock is not None
        try:
            self._sock.setblocking(False)
            while chunk := self._sock.recv(RECV_SIZE):
                self._buffer += chunk
        except OSError:
            pass  # nothing more has arrived, or the connection is gone

    def receive(self) -> Packet:
        """The next packet from the server, waiting at most `read_timeout` for it."""
        deadline: float | None = None
        while True:
            try:
                with memoryview(self._buffer) as view, view[self._offset :] as unread:
                    decoded = decode(unread)
            except ProtocolError as exc:
                self.close()
                raise ProtocolError(f"gearmand at {self.endpoint}: {exc}") from exc
            if decoded is not None:
                packet, size = decoded
                self._offset += size
                if self._offset == len(self._buffer):
                    self._buffer.clear()
                    self._offset = 0
                return packet
            if deadline is None:
                deadline = time.monotonic() + self.read_timeout
            self._fill(deadline)

    def wait_readable(self, timeout: float) -> bool:
        """True once a packet may be received (bytes buffered or arriving) within `timeout`;
        False if nothing came. Unlike `receive`, waiting in vain keeps the connection open."""
        if self._offset < len(self._buffer):
            return True
        if self._sock is None:
            return True  # `receive` reports the closed connection
        readable, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        return bool(readable)

    def _fill(self, deadline: float) -> None:
        """Read more bytes into the buffer before `deadline`."""
        if self._sock is None:
            raise GearmanConnectionError(
                f"connection to gearmand at {self.endpoint} is closed: nothing to receive"
            )
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(RECV_SIZE)
        except OSError as exc:
            self.close()
            raise GearmanConnectionError(
                f"no answer from gearmand at {self.endpoint} within {self.read_timeout}s: {exc}"
            ) from exc
        if not chunk:
            self.close()
            raise GearmanConnectionError(f"gearmand at {self.endpoint} closed the connection")
        self._buffer += chunk

    def _expect(self, *types: PacketType) -> Packet:
        """Receive one packet of one of `types`; ERROR raises GearmanServerError."""
        packet = self.receive()
        if packet.type in types:
            return packet
        if packet.type is PacketType.ERROR:
            raise GearmanServerError(_str(packet.args[0]), _str(packet.args[1]))
        self.close()
        wanted = " or ".join(t.name for t in types)
        raise ProtocolError(
            f"gearmand at {self.endpoint} sent {packet.type.name}, expected {wanted}"
        )

    # Client helpers.

    def echo(self, data: bytes) -> bytes:
        self.send(request(PacketType.ECHO_REQ, data))
        return self._expect(PacketType.ECHO_RES).args[0]

    def ensure_option(self, name: str) -> None:
        """Set a connection option (OPTION_REQ, e.g. "exceptions") unless it is set already."""
        self.connect()
        if name not in self._options:
            self.send(request(PacketType.OPTION_REQ, _text(name)))
            self._expect(PacketType.OPTION_RES)
            self._options.add(name)

    def status(self, handle: bytes) -> JobStatus:
        """GET_STATUS: what this server knows of the job `handle`."""
        self.send(request(PacketType.GET_STATUS, handle))
        return job_status(self._expect(PacketType.STATUS_RES), self.endpoint)

    def status_unique(self, unique: str) -> JobStatus:
        """GET_STATUS_UNIQUE: what this server knows of the job with `unique`."""
        self.send(request(PacketType.GET_STATUS_UNIQUE, _text(unique)))
        return job_status(self._expect(PacketType.STATUS_RES_UNIQUE), self.endpoint)

    def submit_background(
        self, function: str, payload: bytes, *, unique: str = "", priority: str = "normal"
    ) -> bytes:
        """Submit one background job; return its handle."""
        type_ = background_submit_type(priority)
        self.send(request(type_, _text(function), _text(unique), payload))
        return self._expect(PacketType.JOB_CREATED).args[0]

    def submit_background_many(
        self, jobs: Iterable[tuple[str, str, bytes, str]], *, window: int = 1000
    ) -> list[bytes]:
        """Submit (function, unique, payload, priority) jobs pipelined; return handles in order.

        At most `window` submits are unanswered at any time. If gearmand refuses some jobs with
        ERROR, every answer is still read and BatchSubmitError says which jobs were refused and
        which acknowledged (the connection stays usable); if the connection fails,
        BatchConnectionError carries the answers read before (the connection is closed). A job
        that cannot be encoded (bad priority, NUL in its function or unique) raises ValueError
        before anything is sent.
        """
        packets = encode_background([(f, p, u, pr) for f, u, p, pr in jobs], iter(()))
        return self.submit_packets(packets, window=window)

    def submit_packets(self, packets: Sequence[bytes], *, window: int = 1000) -> list[bytes]:
        """Like submit_background_many, for submits encoded already (`encode_background`)."""
        return self._pipeline(_packet_batches(packets, max(1, window // 2)), window)

    def _pipeline(self, batches: Iterable[tuple[bytes, int]], window: int) -> list[bytes]:
        """Send (submits, count) batches, at most `window` submits unanswered; the handles."""
        handles: list[bytes | None] = []
        refusals: list[Refusal] = []
        sent = 0
        try:
            for data, count in batches:
                excess = sent + count - len(handles) - window
                if excess > 0:
                    self._collect(excess, handles, refusals)
                self._send_bytes(data)
                sent += count
            self._collect(sent - len(handles), handles, refusals)
        except (GearmanConnectionError, ProtocolError) as exc:
            self._take_created(sent - len(handles), handles)  # answers that arrived before
            self.close()
            raise BatchConnectionError(str(exc), handles, refusals) from exc
        except BaseException:
            self.close()  # unread answers must not be taken for answers to later requests
            raise
        if refusals:
            raise BatchSubmitError(refusals, handles)
        return handles  # type: ignore[return-value]  # no refusal: no None among them

    def _collect(self, count: int, handles: list[bytes | None], refusals: list[Refusal]) -> None:
        """Read `count` answers to submits into `handles`, one per submit in order: a handle
        for JOB_CREATED, None for ERROR (recorded in `refusals`)."""
        while True:
            count = self._take_created(count, handles)
            if not count:
                return
            packet = self.receive()
            if packet.type is PacketType.JOB_CREATED:
                handles.append(packet.args[0])
            elif packet.type is PacketType.ERROR:
                refusals.append((len(handles), _str(packet.args[0]), _str(packet.args[1])))
                handles.append(None)
            else:
                self.close()
                raise ProtocolError(
                    f"gearmand at {self.endpoint} sent {packet.type.name} in answer to a submit"
                )
            count -= 1

    def _take_created(self, count: int, handles: list[bytes | None]) -> int:
        """Move up to `count` JOB_CREATED packets from the head of the buffer into `handles`
        (the hot path of a batch); return how many are still due."""
        buffer, offset = self._buffer, self._offset
        if not count or len(buffer) - offset < HEADER_SIZE:
            return count
        data = bytes(buffer[offset:]) if offset else bytes(buffer)
        append, before, position, available = handles.append, len(handles), 0, len(data)
        # Fast path, twice as fast as unpacking each header: split at the headers of
        # JOB_CREATED packets with handles under 256 bytes. A piece is then the handle's size
        # byte and the handle, unless its packet is cut off or followed by another kind.
        pieces = data.split(_SMALL_CREATED, count)
        if not pieces[0]:
            for piece in islice(pieces, 1, None):
                if not piece or piece[0] != len(piece) - 1:
                    break
                append(piece[1:])
            if taken := len(handles) - before:
                position = taken * HEADER_SIZE + sum(map(len, handles[before:]))
                count -= taken
        # Anything else (long handles, a cut-off packet): one header at a time.
        unpack, created = HEADER.unpack_from, int(PacketType.JOB_CREATED)
        while count and available - position >= HEADER_SIZE:
            magic, type_, size = unpack(data, position)
            end = position + HEADER_SIZE + size
            if magic != _RES or type_ != created or end > available:
                break
            append(data[position + HEADER_SIZE : end])
            position = end
            count -= 1
        self._offset = offset + position
        return count

    def submit(
        self, function: str, payload: bytes, *, unique: str = "", priority: str = "normal"
    ) -> bytes:
        """Run a foreground job and return its result.

        Waits at most `read_timeout` between packets. WORK_FAIL and WORK_EXCEPTION raise
        JobFailedError; progress packets (status, data, warning) are skipped.
        """
        type_ = foreground_submit_type(priority)
        self.send(request(type_, _text(function), _text(unique), payload))
        handle = self._expect(PacketType.JOB_CREATED).args[0]
        while True:
            packet = self._expect(
                PacketType.WORK_COMPLETE,
                PacketType.WORK_FAIL,
                PacketType.WORK_EXCEPTION,
                PacketType.WORK_STATUS,
                PacketType.WORK_DATA,
                PacketType.WORK_WARNING,
            )
            result = job_result(packet, handle)
            if result is not None:
                return result

    # Worker helpers.

    def can_do(self, function: str) -> None:
        self.send(request(PacketType.CAN_DO, _text(function)))
        self._abilities.add(function)

    def grab_job_uniq(self) -> JobAssignment | None:
        """Ask for a job; None when the server has none (NO_JOB)."""
        self.send(request(PacketType.GRAB_JOB_UNIQ))
        while True:
            packet = self._expect(PacketType.JOB_ASSIGN_UNIQ, PacketType.NO_JOB, PacketType.NOOP)
            if packet.type is PacketType.NO_JOB:
                return None
            if packet.type is PacketType.JOB_ASSIGN_UNIQ:
                handle, function, unique, payload = packet.args
                return JobAssignment(handle, _str(function), _str(unique), payload)
            # NOOP: a wake-up left over from an earlier PRE_SLEEP.

    def pre_sleep(self) -> None:
        """Tell the server to wake this worker with NOOP when a job arrives."""
        self.send(request(PacketType.PRE_SLEEP))

    def work_complete(self, handle: bytes, data: bytes = b"") -> None:
        self.send(request(PacketType.WORK_COMPLETE, handle, data))

    def work_fail(self, handle: bytes) -> None:
        self.send(request(PacketType.WORK_FAIL, handle))


def _packet_batches(packets: Sequence[bytes], size: int) -> Iterator[tuple[bytes, int]]:
    """Packets joined into (bytes, count) batches of at most `size` packets, a batch ending
    with the packet that brings it to BATCH_BYTES (batch ends found in C: the hot path)."""
    ends = list(accumulate(map(len, packets)))
    start = 0
    while start < len(packets):
        full = bisect_left(ends, (ends[start - 1] if start else 0) + BATCH_BYTES, start) + 1
        end = min(start + size, full, len(packets))
        yield b"".join(packets[start:end]), end - start
        start = end


def _submit_head(function: str, priority: str) -> tuple[PacketType, bytes]:
    """The packet type and the `function\\0` prefix of a background submit."""
    if "\0" in function:
        raise ValueError(f"function {function!r} contains NUL")
    return background_submit_type(priority), _text(function) + b"\0"


def encode_background(jobs: Iterable[object], uniques: Iterator[str]) -> list[bytes]:
    """One background submit packet per job, every job checked before any is sent.

    A job is (function, payload[, unique[, priority]]) or an object with those attributes
    (cluster.gearman.client.BackgroundJob); a payload is bytes or str; a missing, None or empty
    unique is taken from `uniques` (empty when it gives none: a raw connection sends what it is
    given, so the restore can bring back a job stored with an empty unique). ValueError for a
    bad priority or a NUL in a function or unique, TypeError for anything else. One pass: the
    normalizing is the framing loop itself.
    """
    pack, req = HEADER.pack, Magic.REQ.value
    heads: dict[tuple[str, str], tuple[PacketType, bytes]] = {}
    last_function = last_priority = None  # most batches repeat one function and priority
    type_, name = PacketType.SUBMIT_JOB_BG, b""
    packets: list[bytes] = []
    append = packets.append
    for job in jobs:
        size = len(job) if type(job) is tuple else 0
        if size == 3:
            (function, payload, unique), priority = job, "normal"
        elif size == 2:
            (function, payload), unique, priority = job, None, "normal"
        elif size == 4:
            function, payload, unique, priority = job
        else:
            function, payload, unique, priority = _job_fields(job)
        if function is not last_function or priority is not last_priority:
            head = heads.get((function, priority))
            if head is None:
                head = heads[function, priority] = _submit_head(function, priority)
            type_, name = head
            last_function, last_priority = function, priority
        if type(payload) is not bytes:
            payload = as_payload(payload)
        if not unique:
            unique = next(uniques, "")
        elif "\0" in unique:
            raise ValueError(f"unique {unique!r} contains NUL")
        data = b"%s%s\0%s" % (name, unique.encode("utf-8", "surrogateescape"), payload)
        append(pack(req, type_, len(data)) + data)
    return packets


def _job_fields(job: object) -> tuple[str, bytes, str | None, str]:
    try:
        return job.function, job.payload, job.unique, job.priority  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(
            f"a job is (function, payload[, unique[, priority]]) or a BackgroundJob: {job!r}"
        ) from None


def as_payload(payload: object) -> bytes:
    """A job payload as bytes: str is UTF-8 encoded; TypeError for anything else."""
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise TypeError(f"a payload is bytes or str, not {type(payload).__name__}")
