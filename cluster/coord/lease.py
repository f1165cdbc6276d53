"""A store's lease: its ephemeral owner znode `stores/<store>/owner`, held by one session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from kazoo.exceptions import NodeExistsError, NoNodeError

from cluster.coord.errors import translated
from cluster.coord.records import Owner, Purpose

if TYPE_CHECKING:
    from cluster.coord.coordination import Coordination


class StoreLease:
    """Ownership of one store by this session: the store's ephemeral owner znode."""

    def __init__(self, coord: Coordination, store: str, node: str, purpose: Purpose) -> None:
        self.coord = coord
        self.zk = coord.zk
        self.hosts = coord.hosts
        self.store = store
        self.path = coord.paths.store_owner(store)
        self.node = node
        self.purpose = purpose

    def current_owner(self) -> Owner | None:
        return self.coord.owner(self.store)

    def held(self) -> bool:
        owner = self.current_owner()
        return owner is not None and owner.session == self.coord.session_id

    @translated
    def try_acquire(self) -> Owner | None:
        """Take the lease if it is free or already ours; otherwise return who holds it."""
        me = Owner(self.node, self.purpose, self.coord.session_id)
        try:
            self.zk.create(self.path, me.encode(), ephemeral=True, makepath=True)
            return None
        except NodeExistsError:
            owner = self.current_owner()
            if owner is None or owner.session == me.session:
                return None if owner else self.try_acquire()
            return owner

    @translated
    def acquire(self, until: Callable[[], bool]) -> bool:
        """Block until the lease is ours (True) or `until()` holds (False)."""
        while not until():
            if self.try_acquire() is None:
                return True
            released = threading.Event()
            if self.zk.exists(self.path, watch=_setter(released)) is None:
                continue
            released.wait(1.0)
        return False

    @translated
    def release(self) -> None:
        """Delete the lease if this session holds it."""
        try:
            _, stat = self.zk.get(self.path)
            if stat.ephemeralOwner == self.coord.session_id:
                self.zk.delete(self.path, version=stat.version)
        except NoNodeError:
            pass


def _setter(event: threading.Event) -> Callable[[object], None]:
    """A kazoo watch callback that only sets `event` (watches must not block)."""
    return lambda _watched: event.set()
