"""Exception types shared by every gearctl module.

Each error carries a message written for the operator: what failed, where, and what to do.
"""


class GearctlError(Exception):
    """Base class of every error gearctl raises on purpose."""


class ProtocolError(GearctlError):
    """A Gearman peer sent bytes that do not form a valid packet or admin reply."""


class GearmanConnectionError(GearctlError):
    """A Gearman server could not be reached, or did not answer within the timeout."""


class GearmanServerError(GearctlError):
    """A Gearman server answered with an ERROR packet (for example QUEUE_ERROR)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"gearmand error {code}: {text}")
        self.code = code
        self.text = text


class StoreError(GearctlError):
    """A memcached store could not be reached or answered something unexpected."""


class LaunchError(GearctlError):
    """A service (gearmand, memcached, ZooKeeper) could not be started or stopped."""


class ConfigError(GearctlError):
    """A configuration file or option is invalid; the message names the field."""
