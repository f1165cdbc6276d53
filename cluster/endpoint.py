"""A `host:port` address, parsed once and validated."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import ConfigError


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, default_port: int | None = None) -> Endpoint:
        """Parse `host:port` (or `host` when a default port is given); raise ConfigError."""
        host, sep, port_text = text.strip().rpartition(":")
        if not sep:
            host, port_text = port_text, ""
        if not port_text:
            if default_port is None:
                raise ConfigError(f"address {text!r} has no port; write it as host:port")
            return cls(host, default_port)
        if not host:
            raise ConfigError(f"address {text!r} has no host; write it as host:port")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"address {text!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ConfigError(f"address {text!r}: port {port} is outside 1..65535")
        return cls(host, port)
