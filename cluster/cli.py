"""The `gearctl` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cluster.errors import GearctlError

if TYPE_CHECKING:
    from cluster.drill import DrillResult

# kazoo warns on every reconnect attempt; the CLI reports ZooKeeper trouble itself.
logging.getLogger("kazoo").setLevel(logging.ERROR)

app = typer.Typer(help="High availability for Gearman job servers.", no_args_is_help=True)
cluster_app = typer.Typer(help="A local cluster on this machine's loopback.", no_args_is_help=True)
agent_app = typer.Typer(help="The per-node agent (what systemd runs).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(agent_app, name="agent")

DirOption = Annotated[
    Path, typer.Option("--dir", help="Where the local cluster keeps its state and logs.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def progress(message: str) -> None:
    typer.echo(message, err=True)


def fail(exc: GearctlError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="Number of nodes.")] = 3,
    directory: DirOption = Path(".gearctl"),
    port_base: Annotated[
        int,
        typer.Option(
            help="0: standard ports (ZooKeeper 2181, gearmand 4730+i, memcached 11211+i); "
            "N: ZooKeeper N, gearmand N+10+i, memcached N+110+i."
        ),
    ] = 0,
    session_timeout: Annotated[
        float, typer.Option(help="ZooKeeper session timeout of the agents, seconds (1..10).")
    ] = 4.0,
    zookeeper_members: Annotated[
        int, typer.Option(help="1: a standalone ZooKeeper; 3: an ensemble (survives one loss).")
    ] = 1,
) -> None:
    """Start ZooKeeper and, per node, a memcached store and an agent running gearmand."""
    from cluster import localcluster

    try:
        cluster = localcluster.up(
            directory, nodes, port_base, progress, session_timeout, zookeeper_members
        )
    except GearctlError as exc:
        raise fail(exc) from None
    first = cluster.nodes[0].gearman.split(":")
    typer.echo(f"cluster '{cluster.cluster}' is up: {len(cluster.nodes)} nodes serving")
    typer.echo(f"  servers:   {','.join(n.gearman for n in cluster.nodes)}")
    typer.echo(f"  zookeeper: {cluster.zookeeper}")
    typer.echo("submit a job and run it:")
    typer.echo(f"  gearman -h {first[0]} -p {first[1]} -b -f reverse 'hello'")
    typer.echo(f"  gearman -h {first[0]} -p {first[1]} -w -c 1 -f reverse -- rev")
    typer.echo(f"status: gearctl cluster status --dir {directory}")


@cluster_app.command("status")
def cluster_status(directory: DirOption = Path(".gearctl"), as_json: JsonOption = False) -> None:
    """Per node: addresses, pids, state, queued jobs and store items; store owners."""
    status = _local_status(directory)
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    typer.echo(
        f"cluster {status['cluster']}  zookeeper {status['zookeeper']['address']}"
        f" ({'reachable' if status['zookeeper']['reachable'] else 'UNREACHABLE'})"
    )
    header = ("node", "state", "gearman", "store", "agent", "gearmand", "queued", "items")
    rows = [header] + [
        (n["name"], n["state"], n["gearman"], n["store"], _text(n["agent_pid"]),
         _text(n["gearmand_pid"]), _text(n["queued_jobs"]), _text(n["store_items"]))
        for n in status["nodes"]
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for store in status["stores"]:
        owner = store["owner"]
        held = f"{owner['node']} ({owner['purpose']})" if owner else "nobody"
        typer.echo(
            f"store {store['store']} ({store['address']}): epoch {_text(store['epoch'])},"
            f" owned by {held}"
        )
    for takeover in status["takeovers"]:
        typer.echo(
            f"take-over of store {takeover['store']} by {takeover['by']}: "
            f"{takeover['outcome']}, {takeover['jobs']} jobs in {takeover['seconds']:.2f}s"
        )


def _local_status(directory: Path) -> dict[str, Any]:
    """The local cluster's status (cluster.localstatus.collect); exits with a clear error."""
    from cluster.localcluster import LocalCluster
    from cluster.localstatus import collect

    try:
        cluster = LocalCluster.load(directory)
        if cluster is None:
            raise GearctlError(f"no cluster in {directory}; start one with `gearctl cluster up`")
        return collect(cluster)
    except GearctlError as exc:
        raise fail(exc) from None


def _text(value: object) -> str:
    return "-" if value is None else str(value)


@cluster_app.command("servers")
def cluster_servers(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="A local cluster's directory (default .gearctl).")
    ] = None,
    zookeeper: Annotated[
        str | None, typer.Option("--zookeeper", help="ZooKeeper hosts: host:port,...")
    ] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="Cluster name in ZooKeeper.")] = "local",
) -> None:
    """Print the live gearmand servers as host:port,... (gearman -h/-p, PHP addServers)."""
    from cluster.servers_cmd import live_servers

    if directory is not None and zookeeper is not None:
        raise fail(GearctlError("give --dir or --zookeeper, not both"))
    try:
        servers = live_servers(directory, zookeeper, cluster)
    except GearctlError as exc:
        raise fail(exc) from None
    if not servers:
        raise fail(GearctlError("no live gearmand server (none is serving or restoring)"))
    typer.echo(",".join(servers))


@cluster_app.command("down")
def cluster_down(directory: DirOption = Path(".gearctl")) -> None:
    """Stop every process `up` started, by PID."""
    from cluster.localcluster import down

    try:
        cluster = down(directory, progress)
    except GearctlError as exc:
        raise fail(exc) from None
    typer.echo("nothing to stop" if cluster is None else f"cluster '{cluster.cluster}' is down")


@app.command("drill")
def drill(
    scenario: Annotated[str, typer.Argument(help="A scenario name, `list`, or `all`.")],
    jobs: Annotated[int, typer.Option(min=1, help="Background jobs in the workload.")] = 5000,
    as_json: JsonOption = False,
) -> None:
    """Failover drills on a fresh local cluster; exit 1 if any job is lost or doubled."""
    from cluster.drill import SCENARIOS, run

    if scenario == "list":
        for item in SCENARIOS.values():
            typer.echo(f"{item.name:28} {item.description}")
        return
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise fail(GearctlError(f"unknown scenario {unknown[0]!r}; see `gearctl drill list`"))
    results = []
    for name in names:
        say = (lambda _text: None) if as_json else (lambda text, n=name: progress(f"[{n}] {text}"))
        try:
            results.append(run(name, jobs, say))
        except GearctlError as exc:
            raise fail(exc) from None
        if not as_json:
            _print_ledger(results[-1])
    if as_json:
        typer.echo(json.dumps([r.as_json() for r in results], indent=2))
    raise typer.Exit(0 if all(r.passed for r in results) else 1)


def _print_ledger(result: DrillResult) -> None:
    ledger = result.ledger
    verdict = "PASS" if result.passed else "FAIL"
    typer.echo(f"{verdict} {result.scenario}: attempted {ledger.attempted}, acknowledged "
               f"{ledger.acknowledged}, executed {ledger.executed}, lost {ledger.lost}, "
               f"duplicated {ledger.duplicated} (bound {result.duplicate_bound}), unexpected "
               f"{ledger.unexpected}, recovered in {result.recovery_seconds:.2f}s")  # fmt: skip


store_app = typer.Typer(help="Look into memcached stores.", no_args_is_help=True)
takeover_app = typer.Typer(help="Take-overs of dead nodes' stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(takeover_app, name="takeover")


@store_app.command("inspect")
def store_inspect(
    store: Annotated[str, typer.Argument(help="A node of the local cluster, or host:port.")],
    directory: DirOption = Path(".gearctl"),
    as_json: JsonOption = False,
) -> None:
    """Jobs in a store by incarnation prefix, function and priority (read-only)."""
    from cluster.endpoint import Endpoint
    from cluster.inspect_store import inspect_store
    from cluster.localcluster import LocalCluster
    from cluster.localstatus import cluster_function_names

    try:
        cluster = LocalCluster.load(directory)
        nodes = {n.name: n.store for n in cluster.nodes} if cluster else {}
        endpoint = Endpoint.parse(nodes.get(store, store))
        known = cluster_function_names(cluster) if cluster else set()
        summary = inspect_store(endpoint, known)
    except GearctlError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"store {summary['store']}: {summary['items']} items, {summary['bytes']} bytes")
    for row in summary["jobs"]:
        typer.echo(f"  {row['prefix']:8} {row['function']:30} {row['priority']:7} {row['count']}")
    if summary["not_jobs"]:
        typer.echo(f"  {summary['not_jobs']} keys are no gearmand jobs")


@takeover_app.command("list")
def takeover_list(directory: DirOption = Path(".gearctl"), as_json: JsonOption = False) -> None:
    """Every take-over of a dead node's store, oldest first."""
    history = _local_status(directory)["takeovers"]
    if as_json:
        typer.echo(json.dumps(history, indent=2))
        return
    for t in history:
        typer.echo(f"store {t['store']} by {t['by']}: {t['outcome']}, {t['jobs']} jobs in "
                   f"{t['seconds']:.2f}s")  # fmt: skip
    if not history:
        typer.echo("no take-over yet")


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", help="The agent's TOML file.")],
) -> None:
    """Run the node agent in the foreground until SIGTERM."""
    from cluster.agent import Agent
    from cluster.config import load_config

    logging.getLogger("kazoo").setLevel(logging.INFO)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        agent = Agent(load_config(config))
    except GearctlError as exc:
        raise fail(exc) from None
    raise typer.Exit(agent.run())
