"""The Gearman side: wire protocol, admin protocol, the failover Client and Worker, discovery."""
