"""The agent's HTTP endpoints (Patroni's REST API is the model): metrics, health, readiness, status.

    GET /metrics   Prometheus text exposition (cluster/metrics.py)
    GET /health    200 when the node serves: state `serving` (its agent holds the store's lease
                   and is neither fenced nor without its store) and gearmand answers its admin
                   `status` within the check timeout now; 503 otherwise
    GET /ready     200 when gearmand accepts jobs: state `serving` or `restoring` and gearmand
                   answers; 503 otherwise
    GET /status    200 always

Every answer but /metrics is the node's JSON (`node_status`), so a failed check says why. An
HTTP check on /health lets HAProxy or keepalived stop sending clients to a node whose gearmand
hangs (a SIGSTOPped gearmand still accepts TCP connections: a TCP check cannot see it) or whose
store is lost. gearmand is asked at each request, with the agent's check timeout: a check never
waits longer than that.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from cluster.coord import LIVE_STATES, NodeState
from cluster.endpoint import Endpoint
from cluster.gearman.admin import is_serving

if TYPE_CHECKING:
    from cluster.metrics import AgentMetrics

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def node_status(metrics: AgentMetrics) -> dict[str, Any]:
    """The node as its agent sees it now, with a fresh answer (or none) from its gearmand."""
    record = metrics.latest
    answering = is_serving(metrics.gearman, metrics.timeout)
    state = metrics.state
    return {
        "node": metrics.node,
        "state": state,
        "gearmand": "answering" if answering else "not answering",
        "serving": state == NodeState.SERVING and answering,
        "accepting_jobs": state in LIVE_STATES and answering,
        "gearman": str(metrics.gearman),
        "store": record.store if record else None,
        "gearmand_pid": record.gearmand_pid if record and state != NodeState.FENCED else None,
        "restarts": record.restarts if record else 0,
        "deferred_jobs": record.deferred_jobs if record else 0,
        "refused_jobs": record.refused_jobs if record else 0,
        "version": record.version if record else None,
    }


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds the agent's shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Checks come every second: no access log."""


class HttpServer:
    """The endpoints on `endpoint`, served by a daemon thread until `stop`."""

    def __init__(self, endpoint: Endpoint, metrics: AgentMetrics) -> None:
        self.metrics = metrics
        self.prometheus = make_wsgi_app(metrics.registry)
        self.server = make_server(endpoint.host, endpoint.port, self.app, _ThreadingServer,
                                  handler_class=_QuietHandler)  # fmt: skip
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/health", "/ready", "/status"):
            status = node_status(self.metrics)
            ok = {"/health": status["serving"], "/ready": status["accepting_jobs"]}.get(path, True)
            body = json.dumps(status, sort_keys=True).encode() + b"\n"
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])  # fmt: skip
            return [body]
        return self.prometheus(environ, start_response)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
