"""gearctl: high availability for Gearman job-server clusters."""

__version__ = "0.1.0"
