"""Client for gearmand's text admin protocol (`status`, `workers`, `version`, ...).

A command is one line ending in "\\n". `status` and `workers` answer with lines ended by a line
".", the others with one line starting "OK"; any command may answer "ERR <code> <text>" (text
URL-encoded, "+" for spaces). Each call opens its own connection, so an AdminClient holds no
socket between calls and needs no closing; with `keep_open=True` (the agent's health check, 5 a
second) it keeps one connection between calls, drops it on any error or timeout (a reply may be
half read) and reconnects on the next call; `close()` it when done.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote_plus

from cluster.endpoint import Endpoint
from cluster.errors import GearctlError, GearmanConnectionError, ProtocolError

MAX_REPLY_SIZE = 16 * 1024 * 1024
STATUS_NAMES_BYTES = 1024 * 1024
"""How much of a `status` reply `status_head` reads: a client that registers many names makes
`status` as large as it likes (100k random names pass MAX_REPLY_SIZE), and the health check that
reads the names must not grow with it."""
R = TypeVar("R")


class AdminCommandError(GearctlError):
    """gearmand answered an admin command with `ERR <code> <text>`."""

    def __init__(self, command: str, code: str, text: str) -> None:
        super().__init__(f"gearmand refused admin command {command!r}: {code} {text}")
        self.command = command
        self.code = code
        self.text = text


@dataclass(frozen=True)
class FunctionStatus:
    name: str
    queued: int
    """Jobs gearmand knows for the function, running ones included (its "total" column)."""
    running: int
    workers: int


@dataclass(frozen=True)
class WorkerInfo:
    fd: int
    address: str
    client_id: str
    functions: tuple[str, ...]


def parse_error(command: str, line: str) -> AdminCommandError:
    """The error for an `ERR <code> <text>` line."""
    _, _, rest = line.rstrip("\r\n").partition(" ")
    code, _, text = rest.partition(" ")
    return AdminCommandError(command, code or "UNKNOWN", unquote_plus(text))


def parse_ok(command: str, line: str) -> str:
    """The text after `OK` in a one-line reply; `ERR` raises AdminCommandError."""
    line = line.rstrip("\r\n")
    if line.startswith("ERR"):
        raise parse_error(command, line)
    if line == "OK" or line.startswith("OK "):
        return line[3:]
    raise ProtocolError(f"admin command {command!r}: expected OK or ERR, got {line[:80]!r}")


def parse_status(text: str) -> list[FunctionStatus]:
    """Parse the lines of a `status` reply (without the final ".")."""
    result = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            raise ProtocolError(f"status line {line[:80]!r} does not have 4 tab-separated fields")
        try:
            queued, running, workers = (int(field) for field in fields[1:])
        except ValueError:
            raise ProtocolError(f"status line {line[:80]!r} has a non-numeric count") from None
        result.append(FunctionStatus(fields[0], queued, running, workers))
    return result


def parse_workers(text: str) -> list[WorkerInfo]:
    """Parse the lines of a `workers` reply: `<fd> <address> <client id> : <function> ...`."""
    result = []
    for line in text.splitlines():
        head, colon, tail = line.partition(" :")
        fields = head.split(" ")
        if not colon or len(fields) != 3 or not fields[0].isdigit():
            raise ProtocolError(f"workers line {line[:80]!r} is not '<fd> <ip> <id> : <functions>'")
        result.append(WorkerInfo(int(fields[0]), fields[1], fields[2], tuple(tail.split())))
    return result


def split_reply(command: str, data: bytes) -> str | None:
    """The body of a complete multi-line reply (lines before "."), or None if incomplete.

    A first line starting "ERR" raises AdminCommandError.
    """
    text = data.decode("utf-8", "replace")
    first, newline, _ = text.partition("\n")
    if first.startswith("ERR ") and newline:
        raise parse_error(command, first)
    if text == ".\n":
        return ""
    body, sep, rest = text.partition("\n.\n")
    if not sep:
        return None
    if rest:
        raise ProtocolError(f"admin command {command!r}: unexpected bytes after '.': {rest[:80]!r}")
    return body


class AdminClient:
    """Admin commands against one gearmand; each call is bounded by `timeout` to connect plus
    `timeout` for the whole reply, so a stopped (SIGSTOPped) server raises instead of hanging."""

    def __init__(
        self, endpoint: Endpoint, *, timeout: float = 2.0, keep_open: bool = False
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.keep_open = keep_open
        self._sock: socket.socket | None = None

    def close(self) -> None:
        """Close the kept-open connection, if any (a later call opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def status(self) -> list[FunctionStatus]:
        return self._multi_line("status", parse_status)

    def status_head(self, max_bytes: int = STATUS_NAMES_BYTES) -> tuple[list[FunctionStatus], bool]:
        """`status`, reading at most about `max_bytes` of it: (functions, complete). A longer
        reply is cut at its last whole line (complete is False)."""

        def head(data: bytes) -> tuple[list[FunctionStatus], bool] | None:
            body = split_reply("status", data)
            if body is not None:
                return parse_status(body), True
            if len(data) < max_bytes:
                return None
            return parse_status(data.decode("utf-8", "replace").rpartition("\n")[0]), False

        functions, complete = self._exchange("status", head)
        if not complete:
            self.close()  # the rest of the reply is unread: a kept-open connection is spoiled
        return functions, complete

    def workers(self) -> list[WorkerInfo]:
        return self._multi_line("workers", parse_workers)

    def version(self) -> str:
        """The server version, e.g. `1.1.20+ds` for Debian's build."""
        return self._one_line("version")

    def getpid(self) -> int:
        reply = self._one_line("getpid")
        try:
            return int(reply)
        except ValueError:
            raise ProtocolError(f"getpid answered {reply[:80]!r}, not a pid") from None

    def shutdown(self, graceful: bool = False) -> None:
        """Ask gearmand to exit.

        Unsupported by Debian's gearmand 1.1.20: it answers `ERR UNKNOWN_COMMAND`, so this raises
        AdminCommandError there; stop that build with a signal instead.
        """
        self._one_line("shutdown graceful" if graceful else "shutdown")

    def _one_line(self, command: str) -> str:
        reply = self._exchange(command, lambda data: data if b"\n" in data else None)
        line, _, rest = reply.decode("utf-8", "replace").partition("\n")
        if rest:
            raise ProtocolError(f"admin command {command!r}: extra bytes {rest[:80]!r}")
        return parse_ok(command, line)

    def _multi_line(self, command: str, parse: Callable[[str], R]) -> R:
        def complete(data: bytes) -> R | None:
            body = split_reply(command, data)
            if body is None:
                # Check the lines received so far, so garbage fails at once, not at the timeout.
                parse(data.decode("utf-8", "replace").rpartition("\n")[0])
                return None
            return parse(body)

        return self._exchange(command, complete)

    def _exchange(self, command: str, complete: Callable[[bytes], R | None]) -> R:
        """Send `command` and read until `complete(reply so far)` returns a value."""
        sock = self._connect()
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        done = False
        try:
            sock.sendall(command.encode() + b"\n")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise GearmanConnectionError(
                        f"gearmand admin at {self.endpoint} closed the connection during "
                        f"{command!r} after {len(data)} bytes"
                    )
                data += chunk
                result = complete(bytes(data))
                if result is not None:
                    done = True
                    return result
                if len(data) > MAX_REPLY_SIZE:
                    raise ProtocolError(
                        f"admin reply to {command!r} exceeds {MAX_REPLY_SIZE} bytes"
                    )
        except OSError as exc:
            raise GearmanConnectionError(
                f"gearmand admin at {self.endpoint} did not answer {command!r} within "
                f"{self.timeout}s: {exc}"
            ) from exc
        finally:
            if not (done and self.keep_open):
                self.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                self._sock = socket.create_connection(
                    (self.endpoint.host, self.endpoint.port), timeout=self.timeout
                )
            except OSError as exc:
                raise GearmanConnectionError(
                    f"cannot connect to gearmand admin at {self.endpoint}: {exc}"
                ) from exc
        return self._sock


def is_serving(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """True when gearmand at `endpoint` answers `version` within `timeout` (readiness check).

    gearmand accepts connections before its replay ends and answers no command until then; a
    one-line command keeps the check independent of how many functions `status` would list."""
    try:
        AdminClient(endpoint, timeout=timeout).version()
    except GearctlError:
        return False
    return True
