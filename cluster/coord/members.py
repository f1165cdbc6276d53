"""Every member record, followed with ZooKeeper watches (for clients' server discovery)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from cluster.coord.records import MemberRecord

if TYPE_CHECKING:
    from cluster.coord.coordination import Coordination

log = logging.getLogger("gearctl.coord")


class MemberFollower:
    """Every member record, followed with watches: a DataWatch on the members folder (it may
    not exist yet), then a ChildrenWatch on it and a DataWatch per member. The callbacks only
    copy records under a lock and call `on_change`, which must not block either."""

    def __init__(self, coord: Coordination, on_change: Callable[[], None]) -> None:
        self.coord = coord
        self.on_change = on_change
        self.closed = False
        self._lock = threading.Lock()
        self._members: dict[str, MemberRecord] = {}
        self._watched: set[str] = set()
        self._children_watch: ChildrenWatch | None = None
        DataWatch(coord.zk, coord.paths.members, self._on_members_folder)

    def members(self) -> dict[str, MemberRecord]:
        with self._lock:
            return dict(self._members)

    def close(self) -> None:
        self.closed = True  # every watch ends at its next event

    def _on_members_folder(self, _data: bytes | None, stat: object) -> bool | None:
        if self.closed:
            return False
        if stat is not None and self._children_watch is None:
            self._children_watch = ChildrenWatch(
                self.coord.zk, self.coord.paths.members, self._on_children
            )
            return False  # the folder is never deleted while the cluster exists
        return None

    def _on_children(self, children: list[str]) -> bool | None:
        if self.closed:
            return False
        with self._lock:
            for gone in set(self._members) - set(children):
                self._members.pop(gone, None)
            new = set(children) - self._watched
            self._watched |= new
        for node in sorted(new):
            DataWatch(self.coord.zk, self.coord.paths.member(node), self._member_watcher(node))
        self.on_change()
        return None

    def _member_watcher(self, node: str) -> Callable[[bytes | None, object], bool | None]:
        def on_data(data: bytes | None, _stat: object) -> bool | None:
            if self.closed:
                return False
            with self._lock:
                if data is None:
                    self._members.pop(node, None)
                    self._watched.discard(node)
                else:
                    try:
                        self._members[node] = MemberRecord.decode(data)
                    except (ValueError, TypeError) as exc:
                        log.warning("member %s: unreadable record: %s", node, exc)
                        self._members.pop(node, None)
            self.on_change()
            return False if data is None else None  # a deleted member: stop watching it

        return on_data
