"""Where gearctl keeps its state in ZooKeeper (one tree per cluster; records in .records).

/gearctl/<cluster>/members/<node>        ephemeral: the live agent's member record
/gearctl/<cluster>/stores/<node>         persistent: store and gearmand addresses, for peers
/gearctl/<cluster>/stores/<node>/epoch   persistent: incarnation counter of the node's store
/gearctl/<cluster>/stores/<node>/owner   ephemeral: who serves or drains the store now
/gearctl/<cluster>/stores/<node>/spread  persistent, optional: the plan of a spread drain
/gearctl/<cluster>/stores/<node>/parts/<i>        persistent: part i's progress and done mark
/gearctl/<cluster>/stores/<node>/parts/<i>/owner  ephemeral: who drains part i now
/gearctl/<cluster>/functions/<name>      persistent: function names seen, to split keys
/gearctl/<cluster>/takeovers/<seq>       persistent: take-over history
/gearctl/<cluster>/takeover-paused       persistent, optional: automatic take-over paused
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/gearctl"


@dataclass(frozen=True)
class ClusterPaths:
    cluster: str

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.cluster}"

    @property
    def members(self) -> str:
        return f"{self.root}/members"

    def member(self, node: str) -> str:
        return f"{self.members}/{node}"

    @property
    def stores(self) -> str:
        return f"{self.root}/stores"

    def store(self, store: str) -> str:
        return f"{self.stores}/{store}"

    def store_epoch(self, store: str) -> str:
        return f"{self.stores}/{store}/epoch"

    def store_owner(self, store: str) -> str:
        return f"{self.stores}/{store}/owner"

    def store_spread(self, store: str) -> str:
        return f"{self.stores}/{store}/spread"

    def store_parts(self, store: str) -> str:
        return f"{self.stores}/{store}/parts"

    def store_part(self, store: str, index: int) -> str:
        return f"{self.store_parts(store)}/{index}"

    def store_part_owner(self, store: str, index: int) -> str:
        return f"{self.store_part(store, index)}/owner"

    @property
    def functions(self) -> str:
        return f"{self.root}/functions"

    @property
    def takeovers(self) -> str:
        return f"{self.root}/takeovers"

    @property
    def takeover_paused(self) -> str:
        return f"{self.root}/takeover-paused"
