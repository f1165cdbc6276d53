"""The `gearctl` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cluster.errors import GearctlError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cluster.agent import Agent
    from cluster.coord import Coordination
    from cluster.drill.scenarios import DrillResult
    from cluster.target import Target

# kazoo warns on every reconnect attempt; the CLI reports ZooKeeper trouble itself.
logging.getLogger("kazoo").setLevel(logging.ERROR)

EXIT_HELP = (
    "Exit codes: 0 done (status: every node serving), 1 error, 2 usage, 3 cluster degraded "
    "(status: a node not serving, a gearmand or store not answering, or ZooKeeper unreachable)."
)
app = typer.Typer(
    help=f"High availability for Gearman job servers.\n\n{EXIT_HELP}", no_args_is_help=True
)
cluster_app = typer.Typer(
    help="A cluster: a local one on this machine's loopback (up, down), or any (status, servers).",
    no_args_is_help=True,
)
agent_app = typer.Typer(help="The per-node agent (what systemd runs).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(agent_app, name="agent")

DirOption = Annotated[
    Path, typer.Option("--dir", help="Where the local cluster keeps its state and logs.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


EXIT_DEGRADED = 3


def _show_version(value: bool) -> None:
    if value:
        from cluster import __version__

        typer.echo(f"gearctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True,
                     help="Print gearctl's version and exit."),
    ] = False,
) -> None:  # fmt: skip
    """High availability for Gearman job servers."""


def progress(message: str) -> None:
    typer.echo(message, err=True)


def fail(exc: GearctlError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


SpreadOption = Annotated[
    bool,
    typer.Option("--spread/--no-spread", help="Agents spread a dead node's jobs over every live "
                 "survivor ([takeover] spread = true, the default); --no-spread: one survivor "
                 "drains the whole store."),
]  # fmt: skip


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="Number of nodes.")] = 3,
    directory: DirOption = Path(".gearctl"),
    port_base: Annotated[
        int,
        typer.Option(
            help="0: standard ports (ZooKeeper 2181, gearmand 4730+i, memcached 11211+i, "
            "metrics 9400+i); N: ZooKeeper N, gearmand N+10+i, memcached N+110+i, "
            "metrics N+210+i."
        ),
    ] = 0,
    session_timeout: Annotated[
        float, typer.Option(help="ZooKeeper session timeout of the agents, seconds (1..10).")
    ] = 4.0,
    zookeeper_members: Annotated[
        int, typer.Option(help="1: a standalone ZooKeeper; 3: an ensemble (survives one loss).")
    ] = 1,
    spread: SpreadOption = True,
) -> None:
    """Start ZooKeeper and, per node, a memcached store and an agent running gearmand."""
    from cluster.local import cluster as localcluster

    try:
        cluster = localcluster.up(
            directory, nodes, port_base, progress, session_timeout, zookeeper_members,
            spread=spread,
        )  # fmt: skip
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


ClusterDirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="A local cluster's directory (the default when no ZooKeeper is "
                 "given: .gearctl)."),
]  # fmt: skip
ZookeeperOption = Annotated[
    str | None,
    typer.Option("--zookeeper", help="ZooKeeper hosts host:port,... [env GEARCTL_ZOOKEEPER]"),
]
ClusterNameOption = Annotated[
    str | None,
    typer.Option("--cluster", help="Cluster name in ZooKeeper (default: the only one there) "
                 "[env GEARCTL_CLUSTER]"),
]  # fmt: skip
AuthFileOption = Annotated[
    Path | None,
    typer.Option("--auth-file", help="ZooKeeper digest credentials `user:password` (mode 0600) "
                 "[env GEARCTL_AUTH_FILE]"),
]  # fmt: skip
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="A TOML with [zookeeper] hosts (default: "
                 "/etc/gearctl/agent.toml, else ~/.config/gearctl/gearctl.toml)."),
]  # fmt: skip


def _target(
    directory: Path | None,
    zookeeper: str | None,
    cluster: str | None,
    auth_file: Path | None,
    config: Path | None,
) -> Target:
    """The cluster the command works on (cluster/target.py says how it is chosen)."""
    from cluster.target import Flags, resolve

    try:
        return resolve(Flags(directory, zookeeper, cluster, auth_file, config))
    except GearctlError as exc:
        raise fail(exc) from None


@contextlib.contextmanager
def _session(
    directory: Path | None,
    zookeeper: str | None,
    cluster: str | None,
    auth_file: Path | None,
    config: Path | None,
) -> Iterator[Coordination]:
    """A ZooKeeper session to the target's existing cluster; errors end the command (exit 1)."""
    with _session_to(_target(directory, zookeeper, cluster, auth_file, config)) as found:
        yield found


@contextlib.contextmanager
def _session_to(target: Target) -> Iterator[Coordination]:
    """A ZooKeeper session to an already resolved target (see `_session`)."""
    from cluster import target as targets

    try:
        with targets.session(target) as found:
            yield found
    except GearctlError as exc:
        raise fail(exc) from None


@cluster_app.command("status")
def cluster_status(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until Ctrl-C (with --json: a line each).")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")
    ] = 2.0,
) -> None:
    """Per node: state, addresses, queued jobs, store items and owner, restarts, session.

    Exit 0 when every node serves, 3 when the cluster is degraded, 1 on error."""
    from cluster.clusterstatus import collect, degraded
    from cluster.statusview import CLEAR_SCREEN, as_json_line, render

    target = _target(directory, zookeeper, cluster, auth_file, config)
    if not watch:
        try:
            status = collect(target)
        except GearctlError as exc:
            raise fail(exc) from None
        typer.echo(json.dumps(status, indent=2) if as_json else render(status))
        raise typer.Exit(EXIT_DEGRADED if degraded(status) else 0)
    from cluster.statusview import watch as watch_status

    terminal = sys.stdout.isatty() and not as_json

    def show(status: dict[str, Any]) -> None:
        if as_json:
            typer.echo(as_json_line(status))
            return
        stamp = time.strftime("%H:%M:%S")
        text = f"{render(status)}\n(every {interval:g}s, {stamp}; Ctrl-C to stop)"
        typer.echo(CLEAR_SCREEN + text if terminal else text + "\n")

    with contextlib.suppress(KeyboardInterrupt):
        try:
            watch_status(target, interval, show)
        except GearctlError as exc:
            raise fail(exc) from None


@cluster_app.command("servers")
def cluster_servers(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the live gearmand servers as host:port,... (gearman -h/-p, PHP addServers)."""
    from cluster.servers_cmd import servers_of

    try:
        servers = servers_of(_target(directory, zookeeper, cluster, auth_file, config))
    except GearctlError as exc:
        raise fail(exc) from None
    if not servers:
        raise fail(GearctlError("no live gearmand server (none is serving or restoring)"))
    typer.echo(",".join(servers))


@cluster_app.command("down")
def cluster_down(directory: DirOption = Path(".gearctl")) -> None:
    """Stop every process `up` started, by PID."""
    from cluster.local.cluster import down

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
    hosts: Annotated[
        str,
        typer.Option(
            help="`local`: every node here; `netns`: each node in a network namespace "
            "of its own (needs root and iproute2)."
        ),
    ] = "local",
    spread: SpreadOption = True,
) -> None:
    """Failover drills on a fresh local cluster; exit 1 if any job is lost or doubled."""
    from cluster.drill.scenarios import SCENARIOS, run

    for name in ("cluster.gearman.client", "cluster.gearman.worker"):  # drills report failovers
        logging.getLogger(name).setLevel(logging.ERROR)
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
            results.append(run(name, jobs, say, hosts, spread=spread))
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
               f"duplicated {ledger.duplicated} (bound {result.duplicate_bound}), re-run "
               f"{ledger.reruns} (in flight at a fault {ledger.in_flight_at_faults}), unexpected "
               f"{ledger.unexpected}, refused {ledger.refused}, recovered in "
               f"{result.recovery_seconds:.2f}s")  # fmt: skip
    fg = result.foreground
    if fg is not None:
        typer.echo(f"     foreground: attempted {fg.attempted}, acknowledged {fg.acknowledged}, "
                   f"executed {fg.executed}, lost {fg.lost}, duplicated {fg.duplicated}, re-run "
                   f"{fg.reruns} (failovers {fg.failovers}), unexpected {fg.unexpected}, "
                   f"failed {fg.failed}")  # fmt: skip


store_app = typer.Typer(help="Look into memcached stores.", no_args_is_help=True)
takeover_app = typer.Typer(help="Take-overs of dead nodes' stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(takeover_app, name="takeover")


@store_app.command("inspect")
def store_inspect(
    store: Annotated[str, typer.Argument(help="A node of the cluster, or host:port.")],
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs in a store by incarnation prefix, function and priority, with the oldest job's age.

    `live` groups are restored or new jobs of the gearmand serving the store now; `waiting`
    groups wait for a restore or a drain. A node with twin stores has both shown. Read-only. A
    host:port store is read even when no cluster can be reached (its groups are then
    `unknown`)."""
    from cluster.storeview import inspect_in_cluster
    from cluster.target import Flags, resolve

    try:
        try:
            target = resolve(Flags(directory, zookeeper, cluster, auth_file, config))
        except GearctlError:
            if ":" not in store:
                raise
            target = None  # a store's address needs no cluster
        summary = inspect_in_cluster(target, store)
    except GearctlError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _show_store("store", summary)
    if summary["twin"] is not None:
        _show_store("twin store", summary["twin"])


def _show_store(title: str, summary: dict[str, Any]) -> None:
    """One store's summary of `store inspect`, for people."""
    typer.echo(f"{title} {summary['store']}: {summary['items']} items, {summary['bytes']} bytes")
    if summary["jobs"]:
        typer.echo(f"  {'prefix':8} {'jobs':8} {'function':30} {'priority':8} {'count':>7}  oldest")
    for row in summary["jobs"]:
        age = "-" if row["oldest_age_s"] is None else f"{row['oldest_age_s']}s"
        typer.echo(f"  {row['prefix']:8} {row['incarnation']:8} {row['function']:30} "
                   f"{row['priority']:8} {row['count']:>7}  {age}")  # fmt: skip
    if summary["not_jobs"]:
        typer.echo(f"  {summary['not_jobs']} keys are no gearmand jobs")


@store_app.command("drain")
def store_drain(
    store: Annotated[str, typer.Argument(help="The dead node whose store is drained.")],
    into: Annotated[
        str, typer.Option("--into", help="A serving node; its gearmand gets the jobs.")
    ],
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drain a dead node's store into a live node, under the take-over's lease and fence."""
    from cluster import target as targets
    from cluster.drain import drain_by_hand, rate_line
    from cluster.restore import RestoreReport

    # The outcome is reported below; the take-over module's own log lines would repeat it.
    logging.getLogger("gearctl.takeover").setLevel(logging.CRITICAL)
    interrupted = threading.Event()
    terminal = sys.stderr.isatty() and not as_json
    where = _target(directory, zookeeper, cluster, auth_file, config)

    def show(report: RestoreReport) -> None:
        line = rate_line(report.moved, report.expected, report.seconds)
        typer.echo(f"\r{line}", nl=False, err=True)

    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: interrupted.set())
    try:
        with targets.session(where) as session:
            result = drain_by_hand(session, store, into, show if terminal else None, interrupted)
    except GearctlError as exc:
        if as_json:
            typer.echo(json.dumps({"store": store, "into": into, "outcome": f"refused: {exc}"}))
        raise fail(exc) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        if terminal:
            typer.echo("", err=True)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        typer.echo(f"store {result.store} into {result.into} ({result.target}): {result.outcome}; "
                   f"{rate_line(result.moved, result.expected, result.seconds)} in "
                   f"{result.seconds:.2f}s; fenced: {result.fenced}")  # fmt: skip
    raise typer.Exit(0 if result.done else 1)


@takeover_app.command("pause")
def takeover_pause(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Pause automatic take-over of dead nodes' stores (maintenance); `store drain` still works."""
    from cluster.coord import PauseRecord

    with _session(directory, zookeeper, cluster, auth_file, config) as session:
        name = session.paths.cluster
        if session.pause_takeover(PauseRecord()):
            typer.echo(f"automatic take-over of cluster {name!r} paused; "
                       "`gearctl takeover resume` to resume")  # fmt: skip
        else:
            typer.echo(f"automatic take-over of cluster {name!r} was already paused")


@takeover_app.command("resume")
def takeover_resume(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Let survivors take dead nodes' stores over again (within a second)."""
    with _session(directory, zookeeper, cluster, auth_file, config) as session:
        name = session.paths.cluster
        if session.resume_takeover():
            typer.echo(f"automatic take-over of cluster {name!r} resumed")
        else:
            typer.echo(f"automatic take-over of cluster {name!r} was not paused")


acl_app = typer.Typer(help="ZooKeeper ACLs of a cluster's znodes.", no_args_is_help=True)
app.add_typer(acl_app, name="acl")


@acl_app.command("check")
def acl_check(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
) -> None:
    """List the cluster's znodes anyone may change; exit 1 if there is one (agents with
    credentials refuse to run on such a tree)."""
    with _session(directory, zookeeper, cluster, auth_file, config) as session:
        open_znodes = session.open_znodes()
    for path in open_znodes:
        typer.echo(f"writable by anyone: {path}")
    typer.echo(f"{len(open_znodes)} znode(s) writable by anyone")
    raise typer.Exit(1 if open_znodes else 0)


@acl_app.command("fix")
def acl_fix(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Give every znode anyone may change the credentials' ACL (theirs to change, everyone's
    to read), as the agents create them. Needs the agents' credentials (`--auth-file`)."""
    target = _target(directory, zookeeper, cluster, auth_file, config)
    if target.auth_file is None:
        raise fail(GearctlError("acl fix needs the agents' credentials: --auth-file FILE"))
    with _session_to(target) as session:
        closed = session.close_znodes()
    for path in closed:
        typer.echo(f"closed: {path}")
    typer.echo(f"{len(closed)} znode(s) closed: only the credentials change the tree now")


@takeover_app.command("list")
def takeover_list(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every take-over of a dead node's store, oldest first."""
    from cluster.statusview import takeover_line

    with _session(directory, zookeeper, cluster, auth_file, config) as session:
        history = [takeover.as_json() for takeover in session.takeover_history()]
    if as_json:
        typer.echo(json.dumps(history, indent=2))
        return
    for takeover in history:
        typer.echo(takeover_line(takeover))
    if not history:
        typer.echo("no take-over yet")


@app.command("workers")
def workers(
    directory: ClusterDirOption = None,
    zookeeper: ZookeeperOption = None,
    cluster: ClusterNameOption = None,
    auth_file: AuthFileOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per function, over every live server: jobs queued and running, workers, oldest job's age.

    The age is that of the oldest job stored for the function in the live nodes' stores."""
    from cluster.workersview import function_table, render_functions

    try:
        rows = function_table(_target(directory, zookeeper, cluster, auth_file, config))
    except GearctlError as exc:
        raise fail(exc) from None
    typer.echo(json.dumps(rows, indent=2) if as_json else render_functions(rows))


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", help="The agent's TOML file.")],
    log_format: Annotated[
        str | None,
        typer.Option(help="text or json (one object per line); default: log.format of the config."),
    ] = None,
) -> None:
    """Run the node agent in the foreground until SIGTERM."""
    from cluster import logsetup

    if log_format is not None and log_format not in logsetup.LOG_FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(logsetup.LOG_FORMATS)}",
                                 param_hint="--log-format")  # fmt: skip
    try:
        agent = _agent(config, log_format)
    except GearctlError as exc:
        raise fail(exc) from None
    raise typer.Exit(agent.run())


@agent_app.command("check-config")
def agent_check_config(
    config: Annotated[Path, typer.Argument(help="The agent's TOML file.")],
) -> None:
    """Validate an agent's TOML and print the effective config (every default filled in)."""
    from cluster.config import load_config
    from cluster.configview import effective_toml

    try:
        typer.echo(effective_toml(load_config(config), config), nl=False)
    except GearctlError as exc:
        raise fail(exc) from None


def _agent(config: Path, log_format: str | None) -> Agent:
    """The agent of `gearctl agent run`, its logging set up (`log_format` already checked)."""
    from cluster import logsetup
    from cluster.agent import Agent
    from cluster.config import load_config

    agent_config = load_config(config)
    logsetup.configure(log_format or agent_config.log_format, agent_config.node)
    logging.getLogger("kazoo").setLevel(logging.INFO)
    return Agent(agent_config)


def gearctl() -> None:
    """The `gearctl` command (the entry point). A plain `gearctl agent run --config X
    [--log-format F]` starts the agent without typer's parsing, whose adapters import pydantic:
    7 MB of the agent's resident memory for the life of the process (issue 18). Anything else
    (help, a bad option) goes through typer."""
    try:
        agent = _plain_agent_run(sys.argv[1:])
    except GearctlError as exc:
        sys.exit(fail(exc).exit_code)
    if agent is None:
        app(prog_name="gearctl")
    else:
        sys.exit(agent.run())


def _plain_agent_run(argv: list[str]) -> Agent | None:
    from cluster.logsetup import LOG_FORMATS

    if argv[:2] != ["agent", "run"]:
        return None
    options: dict[str, str] = {}
    rest = argv[2:]
    while rest:
        name, equals, value = rest[0].partition("=")
        if name not in ("--config", "--log-format") or name in options:
            return None
        if not equals:
            if len(rest) < 2:
                return None
            value, rest = rest[1], rest[1:]
        options[name] = value
        rest = rest[1:]
    log_format = options.get("--log-format")
    if "--config" not in options or log_format not in (None, *LOG_FORMATS):
        return None
    return _agent(Path(options["--config"]), log_format)
