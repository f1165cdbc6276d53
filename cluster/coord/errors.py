"""kazoo's exceptions as gearctl's: callers of cluster.coord never need to know kazoo."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from kazoo.exceptions import KazooException, NoAuthError

from cluster.errors import GearctlError

P = ParamSpec("P")
R = TypeVar("R")


class CoordinationError(GearctlError):
    """ZooKeeper failed a request (connection lost, session expired, ...)."""


class CoordinationRefused(CoordinationError):
    """ZooKeeper refused a change: ACLs are on and this session lacks the credentials."""


class CoordinationTimeout(CoordinationError):
    """ZooKeeper did not answer a request within its bound (`Coordination.bounded`). Not a
    failure: kazoo keeps the request queued and sends it once the connection is back, so a
    write may still land, but only while the session it was sent on lives."""


class PlanEnded(CoordinationError):
    """A spread drain's part was asked for after its plan ended (every part done)."""


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """kazoo's exceptions as CoordinationError, so no caller needs to know kazoo."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except NoAuthError as exc:
            raise CoordinationRefused(f"ZooKeeper {_hosts(args)} refused the change") from exc
        except KazooException as exc:
            raise CoordinationError(
                f"ZooKeeper {_hosts(args)}: {type(exc).__name__} {exc}"
            ) from exc

    return call


def _hosts(args: tuple[object, ...]) -> str:
    """The ensemble of the Coordination (or StoreLease) whose method failed."""
    return str(getattr(args[0], "hosts", "?")) if args else "?"
