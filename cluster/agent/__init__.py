"""The node agent: keeps one gearmand serving the node's store, and only while it owns the store.

- `states`: the states and the transitions of its diagram;
- `machine`: AgentMachine, one step per state, every dependency passed in;
- `gearmand`: the node's gearmand (start, check, stop, fence);
- `service`: Agent, the process (signals, ZooKeeper connection, session guard, take-overs).
"""

from cluster.agent.service import Agent

__all__ = ["Agent"]
