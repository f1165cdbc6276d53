"""A store's lease: its ephemeral owner znode `stores/<store>/owner`, held by one session; a
spread drain's part lease (`stores/<store>/parts/<i>/owner`) is the same kind of lease."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from kazoo.exceptions import NodeExistsError, NoNodeError

from cluster.coord.errors import PlanEnded, translated
from cluster.coord.records import Owner, Purpose

if TYPE_CHECKING:
    from cluster.coord.coordination import Coordination


class StoreLease:
    """Ownership of one store by this session: the store's ephemeral owner znode. Its requests
    wait as long as its coordination's `request_timeout` (the owner znode of a timed-out
    create, landed later, is held by our session: `try_acquire` takes it as ours)."""

    def __init__(
        self, coord: Coordination, store: str, node: str, purpose: Purpose, part: int | None = None
    ) -> None:
        """`part`: the lease of that part of a spread drain, whose znode is created only under
        its existing part record (a part whose plan ended cannot be taken)."""
        self.coord = coord
        self.zk = coord.zk
        self.hosts = coord.hosts
        whole = part is None
        self.path = coord.paths.store_owner(store) if whole else coord.paths.store_part_owner(
            store, part)  # fmt: skip
        self.makepath = whole
        self.node = node
        self.purpose = purpose

    def current_owner(self) -> Owner | None:
        return self.coord.owner_at(self.path)

    def held(self) -> bool:
        owner = self.current_owner()
        return owner is not None and owner.session == self.coord.session_id

    @translated
    def try_acquire(self) -> Owner | None:
        """Take the lease if it is free or already ours; otherwise return who holds it."""
        me = Owner(self.node, self.purpose, self.coord.session_id)
        try:
            created = self.zk.create_async(
                self.path, me.encode(), ephemeral=True, makepath=self.makepath
            )
            self.coord.answer(created)
            return None
        except NoNodeError:
            raise PlanEnded(f"part lease {self.path}: its spread plan ended") from None
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
            watched = self.zk.exists_async(self.path, watch=_setter(released))
            if self.coord.answer(watched) is None:
                continue
            released.wait(1.0)
        return False

    @translated
    def release(self) -> None:
        """Delete the lease if this session holds it."""
        try:
            _, stat = self.coord.answer(self.zk.get_async(self.path))
            if stat.ephemeralOwner == self.coord.session_id:
                self.coord.answer(self.zk.delete_async(self.path, version=stat.version))
        except NoNodeError:
            pass


def _setter(event: threading.Event) -> Callable[[object], None]:
    """A kazoo watch callback that only sets `event` (watches must not block)."""
    return lambda _watched: event.set()
