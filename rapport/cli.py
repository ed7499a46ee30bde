"""The `rapport` command line."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rapport.client import BlockingClient, RapportError, Unavailable, link
from rapport.demo import (
    DEFAULT_MEMBERS,
    DEFAULT_SCALE,
    DemoLoader,
    build_network,
    wait_for_projection,
)
from rapport.dlq import DeadLetters
from rapport.localstack import (
    EMBEDDED_BROKER_TUNING,
    ChildProcess,
    Infra,
    StackError,
    embedded_infra,
    pick_port,
)
from rapport.replay import WRITE_SERVICES, digest, has_state, read_log, replay, settings_of
from rapport.supervisor import (
    DEFAULT_PORTS,
    SERVICES,
    ServiceProcess,
    Supervisor,
    default_workers,
)
from services.projection.api import ProjectionStatus
from shared.events import InvalidEvent, decode
from shared.redis import connect, initialize
from shared.settings import DEFAULT_REDIS
from shared.topics import PARTITIONS, TopicNames

T = TypeVar("T")

app = typer.Typer(help="Rapport: the connections backend of a professional network.")
console = Console()

STATE_DIR = Path(".rapport")
STACK_FILE = "stack.json"
# Every topic has at least as many partitions as replicas: each consumes some.
MAX_REPLICAS = min(PARTITIONS.values())


@app.callback()
def main() -> None:
    """Rapport: run the local stack and talk to its services."""


# Each role's token (shared.auth): its setting, and the file `rapport run` generates it into.
TOKEN_SOURCES = {
    "service": ("RAPPORT_API_TOKENS", "token"),
    "ops": ("RAPPORT_OPS_TOKENS", "ops-token"),
    "admin": ("RAPPORT_ADMIN_TOKENS", "admin-token"),
}


def role_token(state_dir: Path, role: str) -> str:
    """The role's setting's first token, or one generated once into .rapport/<file>."""
    variable, filename = TOKEN_SOURCES[role]
    configured = os.environ.get(variable, "").split(",")[0].strip()
    if configured:
        return configured
    path = state_dir / filename
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def api_token(state_dir: Path) -> str:
    """The gateway's (service) token: member calls."""
    return role_token(state_dir, "service")


def _workers(name: str, replicas: int | None) -> int:
    """Worker processes of a service: `--replicas`, else its default (`default_workers`)."""
    return replicas or default_workers(name)


def _service_port(name: str) -> int:
    return int(os.environ.get(f"RAPPORT_{name.upper()}_PORT", DEFAULT_PORTS[name]))


@app.command()
def run(
    kafka_port: Annotated[int, typer.Option(help="Port of the embedded broker")] = 19092,
    redis_port: Annotated[int, typer.Option(help="Port of the embedded redis-server")] = 16379,
    read_model_redis_port: Annotated[
        int, typer.Option(help="Port of the embedded redis-server of the read models")
    ] = 16380,
    state_dir: Annotated[Path, typer.Option(help="Logs, Redis AOF and the token")] = STATE_DIR,
    demo: Annotated[bool, typer.Option(help="Seed the demo network once the stack is up")] = False,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_REPLICAS,
            help="Processes of every service (each a full replica: its own consumers, relay "
            "and sweeps); default RAPPORT_<SERVICE>_WORKERS, else 2 for the connection and "
            "invitation services and 1 for the others",
        ),
    ] = None,
) -> None:
    """Start the embedded broker and Redis (unless configured), then the four services."""
    started = time.monotonic()
    token = api_token(state_dir)
    ops_token, admin_token = role_token(state_dir, "ops"), role_token(state_dir, "admin")
    workers = {name: _workers(name, replicas) for name in SERVICES}
    most = max(workers.values())
    try:
        with embedded_infra(
            state_dir,
            kafka_port=pick_port(kafka_port),
            redis_port=pick_port(redis_port),
            archive=True,
            read_models=True,
            read_model_redis_port=pick_port(read_model_redis_port),
            # One partition per replica: each consumes one, and the embedded broker pays for
            # every partition on every fetch (at 12 per topic, over a quarter of an invite's CPU).
            partitions=most,
        ) as infra:
            fewest = min(infra.partitions.get(topic, 0) for topic in TopicNames().all)
            if fewest < most:
                console.print(
                    f"[yellow]the log was written with {fewest} partition(s) per topic: "
                    f"replicas past that serve HTTP, but consume nothing[/yellow]"
                )
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
                "REDIS_URL": infra.redis_url,
                "READ_MODEL_REDIS_URL": infra.read_models_url,
                "RAPPORT_API_TOKENS": os.environ.get("RAPPORT_API_TOKENS") or token,
                "RAPPORT_OPS_TOKENS": os.environ.get("RAPPORT_OPS_TOKENS") or ops_token,
                "RAPPORT_ADMIN_TOKENS": os.environ.get("RAPPORT_ADMIN_TOKENS") or admin_token,
                **EMBEDDED_BROKER_TUNING,
            }
            if infra.archived:
                env["RAPPORT_LOG_ARCHIVE"] = "1"
            services = [
                ServiceProcess(
                    name,
                    _service_port(name),
                    env,
                    state_dir / "logs",
                    workers=workers[name],
                )
                for name in SERVICES
            ]
            helpers = [archiver(infra, state_dir / "logs")] if infra.archived else []
            supervisor = Supervisor(services, helpers=helpers, infra=infra)
            # Explicit handlers: a shell starting us in the background ignores SIGINT otherwise.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: supervisor.request_stop())
            try:
                supervisor.start_all()
                write_stack_file(state_dir, infra, services)
                _print_ready(infra, services, state_dir, started)
                if demo:
                    try:
                        _run_demo(state_dir, DEFAULT_SCALE, DEFAULT_MEMBERS, 7, None, 16, 100)
                    except typer.Exit:
                        # The stack stays up: the demo said what went wrong above.
                        console.print("[yellow]demo incomplete; the stack keeps running[/yellow]")
                    board = link(services[-1].url, f"/dashboard#token={ops_token}")
                    console.print(
                        f"dashboard: [bold]{board}[/bold]",
                        soft_wrap=True,
                    )
                supervisor.watch()
                console.print("\n[bold]stopping…[/bold]")
            finally:
                supervisor.stop()
                (state_dir / STACK_FILE).unlink(missing_ok=True)
    except StackError as exc:
        console.print(f"[red]rapport run failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print("stopped.")


def archiver(infra: Infra, log_dir: Path) -> ChildProcess:
    """The process copying the log into Redis (rapport.archive), as a supervised helper."""
    argv = [sys.executable, "-m", "rapport.archive", infra.kafka_bootstrap, infra.redis_url]
    return ChildProcess("archiver", argv, log_dir / "archiver.log")


def _print_ready(
    infra: Infra, services: list[ServiceProcess], state_dir: Path, started: float
) -> None:
    token, ops_token = api_token(state_dir), role_token(state_dir, "ops")
    admin_token = role_token(state_dir, "admin")
    table = Table(title=f"Rapport is up ({time.monotonic() - started:.1f}s)")
    table.add_column("service")
    table.add_column("URL")
    table.add_column("docs")
    for svc in services:
        table.add_row(svc.name, svc.url, link(svc.url, "/docs"))
    console.print(table)
    projection_url = next(s.url for s in services if s.name == "projection")
    console.print(f"dashboard: {projection_url}/dashboard#token={ops_token}", soft_wrap=True)
    console.print(f"kafka:     {infra.kafka_bootstrap}")
    console.print(f"redis:     {infra.redis_url}  (write side, AOF)")
    console.print(f"read models: {infra.read_models_url}  (snapshots)")
    console.print(
        f"API token: [bold]{token}[/bold]  (Authorization: Bearer <token>, with X-Member-Id)",
        soft_wrap=True,
    )
    console.print(f"ops token:   {ops_token}  (read-only: status, dashboard)", soft_wrap=True)
    console.print(f"admin token: {admin_token}  (rebuild)", soft_wrap=True)
    console.print("Ctrl-C stops everything.")


projection = typer.Typer(help="Operate the projection (read models).")
app.add_typer(projection, name="projection")


def write_stack_file(state_dir: Path, infra: Infra, services: list[ServiceProcess]) -> None:
    """Where the running stack is, so that the other verbs find it without flags."""
    info = {
        "kafka": infra.kafka_bootstrap,
        "redis": infra.redis_url,
        "read_models": infra.read_models_url,
        "urls": {s.name: s.url for s in services},
    }
    (state_dir / STACK_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _stack(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def service_url(name: str, state_dir: Path) -> str:
    """RAPPORT_<NAME>_URL, else the running `rapport run` stack, else the default port."""
    return (
        os.environ.get(f"RAPPORT_{name.upper()}_URL")
        or _stack(state_dir).get("urls", {}).get(name)
        or f"http://127.0.0.1:{_service_port(name)}"
    )


def bootstrap_servers(state_dir: Path) -> str:
    return (
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or _stack(state_dir).get("kafka")
        or "127.0.0.1:19092"
    )


def _urls(state_dir: Path, url: str | None = None, service: str = "projection") -> dict[str, str]:
    urls = {name: service_url(name, state_dir) for name in SERVICES}
    if url:
        urls[service] = url
    return urls


def _api(
    state_dir: Path,
    use: Callable[[BlockingClient], T],
    role: str = "service",
    url: str | None = None,
    service: str = "projection",
) -> T:
    """One use of the services through the typed client; an error answer is printed and exits
    1, an unreachable service exits 2."""
    with BlockingClient(_urls(state_dir, url, service), role_token(state_dir, role)) as api:
        try:
            return use(api)
        except RapportError as exc:
            if exc.code == "unreachable":
                console.print(f"[red]{exc.message}[/red] (is `make run` up?)")
                raise typer.Exit(2) from exc
            console.print(f"[red]{exc.status} {exc.code}[/red]: {exc.message}")
            raise typer.Exit(1) from exc


def _get_status(api: BlockingClient, attempts: int = 10) -> ProjectionStatus:
    """The projection's status; a 503 (Redis or the broker briefly gone) is retried."""
    for attempt in range(attempts):
        try:
            status: ProjectionStatus = api.status()
            return status
        except Unavailable:
            if attempt == attempts - 1:
                raise
        time.sleep(min(0.2 * 2**attempt, 2.0))  # backoff before a retry
    raise AssertionError("unreachable")


@projection.command("status")
def projection_status(
    url: Annotated[str | None, typer.Option(help="Projection service URL")] = None,
    state_dir: Annotated[Path, typer.Option()] = STATE_DIR,
) -> None:
    """Version, events applied, lag per partition, DLQ counts and rebuild state."""
    status = _api(state_dir, _get_status, url=url)
    table = Table(title=f"projection v{status.version}")
    table.add_column("partition")
    table.add_column("position", justify="right")
    table.add_column("lag", justify="right")
    for tp, lag in status.lag.items():
        table.add_row(tp, str(status.positions.get(tp, 0)), str(lag))
    console.print(table)
    console.print(
        f"events applied: {status.events_applied:,}  last event: {status.last_event_time}"
        f"  total lag: {status.total_lag:,}  DLQ: {status.dlq or 'none'}"
        f"  rebuild: {status.rebuild.get('state')}"
    )


@projection.command("rebuild")
def projection_rebuild(
    url: Annotated[str | None, typer.Option(help="Projection service URL")] = None,
    state_dir: Annotated[Path, typer.Option()] = STATE_DIR,
    timeout_s: Annotated[float, typer.Option(help="Give up waiting after this long")] = 3600,
) -> None:
    """Replay every topic into a new keyspace version; readers flip when it caught up."""

    def rebuild(api: BlockingClient) -> tuple[int, dict[str, Any]]:
        version = api.rebuild().version
        deadline = time.monotonic() + timeout_s
        state: dict[str, Any] = {}
        with Progress(
            TextColumn("rebuilding v{task.fields[version]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("rebuild", total=None, version=version)
            while time.monotonic() < deadline:
                state = _get_status(api).rebuild
                bar.update(
                    task,
                    completed=int(state.get("applied", 0)),
                    total=int(state.get("total", 0)) or None,
                )
                if state.get("state") in ("done", "failed", "superseded"):
                    break
                time.sleep(0.5)  # progress display refresh
        return version, state

    version, state = _api(state_dir, rebuild, role="admin", url=url)
    if state.get("state") != "done":
        console.print(f"[red]rebuild {state.get('state')}:[/red] {state.get('error', 'timed out')}")
        raise typer.Exit(1)
    console.print(f"rebuilt into version {version}; readers switched.")


# --- dead letters ---------------------------------------------------------------------------

StateDir = Annotated[Path, typer.Option(help="Where `rapport run` keeps the token and stack")]

dlq_app = typer.Typer(help="Dead-letter topics: list, show, replay.")
app.add_typer(dlq_app, name="dlq")
DlqTopic = Annotated[str, typer.Argument(help="A catalog topic, e.g. rapport.engagements")]


def _dead_letters(state_dir: Path) -> DeadLetters:
    return DeadLetters(bootstrap_servers(state_dir), os.environ.get("RAPPORT_NAMESPACE", ""))


@dlq_app.command("list")
def dlq_list(state_dir: StateDir = STATE_DIR) -> None:
    """Records in each topic's DLQ, and how many were replayed already."""
    counts = asyncio.run(_dead_letters(state_dir).counts())
    table = Table(title="dead letters")
    for column in ("topic", "records", "replayed"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for c in counts:
        table.add_row(c.topic, str(c.records), str(c.replayed))
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    topic: DlqTopic,
    limit: Annotated[int, typer.Option(help="At most this many records")] = 50,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """The DLQ's records: type, reason, which consumer, where they came from."""
    try:
        records = asyncio.run(_dead_letters(state_dir).show(topic, limit))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table(title=f"{topic}.dlq")
    for column in ("offset", "type", "reason", "consumer", "from", "event id"):
        table.add_column(column)
    for r in records:
        table.add_row(str(r.offset), r.type, r.reason, r.consumer, r.source, r.event_id)
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    topic: DlqTopic,
    reason: Annotated[
        str | None, typer.Option(help="Only records whose reason starts with this")
    ] = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Put the DLQ's records not replayed yet back on their topic (each applied once)."""
    try:
        replayed, skipped = asyncio.run(
            _dead_letters(state_dir).replay(topic, reason_prefix=reason)
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(
        f"replayed {replayed} record(s) to {topic}" + (f"; skipped {skipped}" if skipped else "")
    )


# --- replay ----------------------------------------------------------------------------------


def redis_url_of(state_dir: Path) -> str:
    return os.environ.get("REDIS_URL") or _stack(state_dir).get("redis") or DEFAULT_REDIS


@app.command("replay")
def replay_command(
    service: Annotated[str, typer.Argument(help="invitation, connection or engagement")],
    into: Annotated[
        str,
        typer.Option(
            help="fresh: a new keyspace, compared with the live state by digest, then dropped; "
            "live: the service's own keyspace, only when its state was lost (empty)"
        ),
    ] = "fresh",
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Rebuild a write service's state from the event log."""
    if service not in WRITE_SERVICES or into not in ("fresh", "live"):
        console.print(f"[red]service one of {', '.join(WRITE_SERVICES)}; --into fresh|live[/red]")
        raise typer.Exit(2)
    namespace = os.environ.get("RAPPORT_NAMESPACE", "")
    code = asyncio.run(
        _replay(service, into, bootstrap_servers(state_dir), redis_url_of(state_dir), namespace)
    )
    raise typer.Exit(code)


async def _replay(service: str, into: str, bootstrap: str, redis_url: str, namespace: str) -> int:
    # On a Redis Cluster (RAPPORT_REDIS_CLUSTER) the keyspace spans every node.
    redis = connect(redis_url, cluster=settings_of(service, namespace).redis_cluster)
    await initialize(redis)
    try:
        live = await digest(service, redis, namespace)
        if into == "live" and await has_state(service, redis, namespace):
            console.print(f"[red]{service} has state; replay --into live only rebuilds a lost one")
            return 1
        events = await read_log(bootstrap, namespace)
        keyspace = namespace if into == "live" else f"{namespace}replay{int(time.time())}."
        folded = await replay(service, redis, events, keyspace)
        rebuilt = await digest(service, redis, keyspace)
        console.print(f"{service}: {folded} event(s) folded into keyspace {keyspace!r}")
        if into == "live":
            console.print(f"state rebuilt; digest {rebuilt[:16]}")
            return 0
        await _drop_keyspace(redis, keyspace)
        same = rebuilt == live
        console.print(
            f"live {live[:16]}  replayed {rebuilt[:16]}  "
            + ("[green]equal[/green]" if same else "[red]differ[/red]")
        )
        return 0 if same else 1
    finally:
        await redis.aclose()


async def _drop_keyspace(redis: Redis, keyspace: str) -> None:
    async for key in redis.scan_iter(match=f"{keyspace}rapport:*", count=1000):
        await redis.unlink(key)


# --- quick manual use ------------------------------------------------------------------------


@app.command()
def invite(
    sender: Annotated[str, typer.Argument(help="The inviting member (acts as them)")],
    recipient: Annotated[str, typer.Argument(help="The member to invite")],
    message: Annotated[str | None, typer.Option(help="A note (300 characters at most)")] = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Invite RECIPIENT to connect, acting as SENDER."""
    sent = _api(state_dir, lambda api: api.invite(sender, recipient, message or None))
    console.print(
        f"invitation [bold]{sent.invitation_id}[/bold] {sender} → {recipient}: {sent.status}"
    )


@app.command()
def accept(
    invitation_id: Annotated[str, typer.Argument(help="From `rapport invite`")],
    member: Annotated[str, typer.Option("--as", help="The recipient (acts as them)")],
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Accept an invitation, acting as its recipient."""
    done = _api(state_dir, lambda api: api.accept(member, invitation_id))
    console.print(
        f"invitation {invitation_id}: [bold]{done.status}[/bold] "
        f"({done.sender} and {done.recipient} connect once the connection service agrees)"
    )


DEGREE_LABELS = {0: "yourself", 1: "1st", 2: "2nd", 3: "3rd"}


@app.command()
def degree(
    member: Annotated[str, typer.Argument(help="You (acts as them)")],
    others: Annotated[list[str], typer.Argument(help="One or more other members")],
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Degree between MEMBER and each of OTHERS (1st, 2nd, 3rd or further); with one other,
    the mutual connections too."""
    if len(others) == 1:
        other = others[0]
        found = _api(state_dir, lambda api: api.degree(member, other))
        label = DEGREE_LABELS.get(found.degree, "beyond 3rd / unknown")
        console.print(
            f"{member} → {other}: [bold]{label}[/bold]"
            f"  mutual connections: {found.mutual_connections}"
            + (f" ({', '.join(found.mutual_sample)})" if found.mutual_sample else "")
        )
        return
    badges = _api(state_dir, lambda api: api.degrees(member, others))
    for other, value in badges.degrees.items():
        label = DEGREE_LABELS.get(value, "beyond 3rd / unknown")
        console.print(f"{member} → {other}: [bold]{label}[/bold]")


@app.command()
def path(
    member: Annotated[str, typer.Argument(help="You (acts as them)")],
    other: Annotated[str, typer.Argument(help="The other member")],
    limit: Annotated[int, typer.Option(min=1, max=10)] = 3,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """How MEMBER and OTHER are connected: up to LIMIT shortest paths, most engaged first."""
    found = _api(state_dir, lambda api: api.paths(member, other, limit))
    if not found.paths:
        console.print(f"no path from {member} to {other} within 3 steps")
        return
    for p in found.paths:
        console.print(" → ".join(p.members) + f"  (engagement {p.score:.2f})")


@app.command()
def suggest(
    member: Annotated[str, typer.Argument(help="You (acts as them)")],
    limit: Annotated[int, typer.Option(min=1, max=100)] = 10,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """People MEMBER may know, ranked by mutual connections."""
    found = _api(state_dir, lambda api: api.suggestions(member, limit))
    table = Table(title=f"people {member} may know")
    for column in ("member", "name", "mutual", "score", "also shared"):
        table.add_column(column, justify="right" if column in ("mutual", "score") else "left")
    for item in found.items:
        table.add_row(
            item.member_id,
            item.name or "",
            str(item.mutual_connections),
            f"{item.score:.2f}",
            ", ".join(item.shared or []),
        )
    console.print(table if found.items else f"no suggestions for {member} yet")


@app.command()
def summary(
    member: Annotated[str, typer.Argument(help="You (acts as them)")],
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Counts of MEMBER's network."""
    counts = _api(state_dir, lambda api: api.summary(member))
    table = Table(title=f"{member}'s network")
    table.add_column("")
    table.add_column("count", justify="right")
    for key, value in counts.model_dump().items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="members, invitations, connections, engagements")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many records")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw envelopes")] = False,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Print events as they arrive on TOPIC (Ctrl-C stops)."""
    name = topic if topic.startswith("rapport.") else f"rapport.{topic}"
    physical = TopicNames(os.environ.get("RAPPORT_NAMESPACE", ""))(name)
    try:
        asyncio.run(_tail(physical, bootstrap_servers(state_dir), from_beginning, limit, as_json))
    except KeyboardInterrupt:
        pass


async def _tail(
    topic: str, bootstrap: str, from_beginning: bool, limit: int | None, as_json: bool
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # a watcher, not a member of any service's group
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    seen = 0
    try:
        console.print(f"[dim]tailing {topic} on {bootstrap}[/dim]", highlight=False)
        async for record in consumer:
            seen += 1
            if as_json:
                console.print_json((record.value or b"{}").decode())
            else:
                try:
                    envelope, _ = decode(record.value or b"")
                    line = (
                        f"{envelope.occurred_at:%H:%M:%S} [bold]{envelope.type}[/bold] "
                        f"key={envelope.key} {json.dumps(envelope.payload, ensure_ascii=False)}"
                    )
                except InvalidEvent as exc:
                    line = f"[red]invalid record[/red] @{record.partition}:{record.offset}: {exc}"
                console.print(line, highlight=False, soft_wrap=True)
            if limit is not None and seen >= limit:
                break
    finally:
        await consumer.stop()


# --- demo network ----------------------------------------------------------------------------


@app.command()
def demo(
    scale: Annotated[
        float, typer.Option(min=0.001, help="Fraction of the real industry averages")
    ] = DEFAULT_SCALE,
    members: Annotated[int, typer.Option(min=12, help="Members to register")] = DEFAULT_MEMBERS,
    seed: Annotated[int, typer.Option(help="Same seed, same network")] = 7,
    tag: Annotated[str | None, typer.Option(help="Member-id suffix (default: random)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 16,
    invite_limit: Annotated[
        int, typer.Option(help="The invitation service's weekly limit per sender")
    ] = 100,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Build a realistic demo network through the public APIs (power-law degrees; industry
    averages near Technology 673 … Healthcare 553, times --scale)."""
    _run_demo(state_dir, scale, members, seed, tag, concurrency, invite_limit)


def _run_demo(
    state_dir: Path,
    scale: float,
    members: int,
    seed: int,
    tag: str | None,
    concurrency: int,
    invite_limit: int,
) -> None:
    try:
        network = build_network(
            members, scale, seed, tag or secrets.token_hex(2), invite_limit=invite_limit
        )
    except ValueError as exc:
        console.print(f"[red]demo:[/red] {exc}")
        raise typer.Exit(2) from exc
    urls = {name: service_url(name, state_dir) for name in SERVICES}
    token = api_token(state_dir)
    console.print(
        f"demo network: {len(network.members):,} members, {len(network.edges):,} connections "
        f"(scale {scale})"
    )
    loader = DemoLoader(urls, token, concurrency)
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        people = bar.add_task("members", total=len(network.members))
        links = bar.add_task("connections", total=len(network.edges))
        try:
            result = asyncio.run(
                loader.load(
                    network,
                    on_member=lambda: bar.advance(people),
                    on_edge=lambda: bar.advance(links),
                )
            )
        except Unavailable as exc:
            console.print(f"[red]demo: services unreachable:[/red] {exc} (is `make run` up?)")
            raise typer.Exit(2) from exc
    took = time.monotonic() - started
    console.print(
        f"registered {result.registered:,}, connected {result.connected:,}, "
        f"skipped {result.skipped:,} in {took:.0f}s"
    )
    for error in result.errors[:10]:
        console.print(f"[red]  {error}[/red]")
    rows = asyncio.run(wait_for_projection(urls, token, {m.member_id for m in network.members}))
    table = Table(title="industry averages (projection) vs demo targets")
    for column in ("industry", "members", "average", "median", "target", "deviation"):
        table.add_column(column, justify="left" if column == "industry" else "right")
    for row in sorted(rows, key=lambda r: -r["average_connections"]):
        target = network.targets[row["industry"]]
        deviation = row["average_connections"] / target - 1
        colour = "green" if abs(deviation) <= 0.10 else "red"
        table.add_row(
            row["industry"],
            f"{row['members']:,}",
            f"{row['average_connections']:.2f}",
            f"{row['median_connections']:.1f}",
            f"{target:.2f}",
            f"[{colour}]{deviation:+.1%}[/{colour}]",
        )
    console.print(table)
    if result.errors:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
