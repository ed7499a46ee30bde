"""The `rapport` command line."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.localstack import EMBEDDED_BROKER_TUNING, StackError, embedded_infra, pick_port
from shared.supervisor import DEFAULT_PORTS, SERVICES, ServiceProcess, Supervisor

app = typer.Typer(help="Rapport: the connections backend of a professional network.")
console = Console()

STATE_DIR = Path(".rapport")


@app.callback()
def main() -> None:
    """Rapport: run the local stack and talk to its services."""


def api_token(state_dir: Path) -> str:
    """RAPPORT_API_TOKENS' first token, or one generated once into .rapport/token."""
    configured = os.environ.get("RAPPORT_API_TOKENS", "").split(",")[0].strip()
    if configured:
        return configured
    path = state_dir / "token"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def _service_port(name: str) -> int:
    return int(os.environ.get(f"RAPPORT_{name.upper()}_PORT", DEFAULT_PORTS[name]))


@app.command()
def run(
    kafka_port: Annotated[int, typer.Option(help="Port of the embedded broker")] = 19092,
    redis_port: Annotated[int, typer.Option(help="Port of the embedded redis-server")] = 16379,
    state_dir: Annotated[Path, typer.Option(help="Logs, Redis AOF and the token")] = STATE_DIR,
) -> None:
    """Start the embedded broker and Redis (unless configured), then the four services."""
    started = time.monotonic()
    token = api_token(state_dir)
    try:
        with embedded_infra(
            state_dir, kafka_port=pick_port(kafka_port), redis_port=pick_port(redis_port)
        ) as infra:
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
                "REDIS_URL": infra.redis_url,
                "RAPPORT_API_TOKENS": os.environ.get("RAPPORT_API_TOKENS") or token,
                **EMBEDDED_BROKER_TUNING,
            }
            services = [
                ServiceProcess(name, _service_port(name), env, state_dir / "logs")
                for name in SERVICES
            ]
            supervisor = Supervisor(services)
            # Explicit handlers: a shell starting us in the background ignores SIGINT otherwise.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: supervisor.request_stop())
            try:
                supervisor.start_all()
                _print_ready(infra.kafka_bootstrap, infra.redis_url, services, token, started)
                supervisor.watch()
                console.print("\n[bold]stopping…[/bold]")
            finally:
                supervisor.stop()
    except StackError as exc:
        console.print(f"[red]rapport run failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print("stopped.")


def _print_ready(
    kafka: str, redis_url: str, services: list[ServiceProcess], token: str, started: float
) -> None:
    table = Table(title=f"Rapport is up ({time.monotonic() - started:.1f}s)")
    table.add_column("service")
    table.add_column("URL")
    table.add_column("docs")
    for svc in services:
        table.add_row(svc.name, svc.url, f"{svc.url}/docs")
    console.print(table)
    console.print(f"kafka:     {kafka}")
    console.print(f"redis:     {redis_url}")
    console.print(f"API token: [bold]{token}[/bold]  (Authorization: Bearer <token>)")
    console.print("Ctrl-C stops everything.")


projection = typer.Typer(help="Operate the projection (read models).")
app.add_typer(projection, name="projection")


def _client(url: str | None, state_dir: Path) -> httpx.Client:
    base = (
        url
        or os.environ.get("RAPPORT_PROJECTION_URL")
        or (f"http://127.0.0.1:{_service_port('projection')}")
    )
    headers = {"Authorization": f"Bearer {api_token(state_dir)}"}
    return httpx.Client(base_url=base, headers=headers, timeout=10)


def _get_status(client: httpx.Client) -> dict:
    response = client.get("/projection/status")
    response.raise_for_status()
    return response.json()


@projection.command("status")
def projection_status(
    url: Annotated[str | None, typer.Option(help="Projection service URL")] = None,
    state_dir: Annotated[Path, typer.Option()] = STATE_DIR,
) -> None:
    """Version, events applied, lag per partition, DLQ counts and rebuild state."""
    with _client(url, state_dir) as client:
        status = _get_status(client)
    table = Table(title=f"projection v{status['version']}")
    table.add_column("partition")
    table.add_column("position", justify="right")
    table.add_column("lag", justify="right")
    for tp, lag in status["lag"].items():
        table.add_row(tp, str(status["positions"].get(tp, 0)), str(lag))
    console.print(table)
    console.print(
        f"events applied: {status['events_applied']:,}  last event: {status['last_event_time']}"
        f"  total lag: {status['total_lag']:,}  DLQ: {status['dlq'] or 'none'}"
        f"  rebuild: {status['rebuild'].get('state')}"
    )


@projection.command("rebuild")
def projection_rebuild(
    url: Annotated[str | None, typer.Option(help="Projection service URL")] = None,
    state_dir: Annotated[Path, typer.Option()] = STATE_DIR,
    timeout_s: Annotated[float, typer.Option(help="Give up waiting after this long")] = 3600,
) -> None:
    """Replay every topic into a new keyspace version; readers flip when it caught up."""
    with _client(url, state_dir) as client:
        started = client.post("/projection/rebuild")
        if started.status_code != 202:
            console.print(f"[red]rebuild refused:[/red] {started.text}")
            raise typer.Exit(1)
        version = started.json()["version"]
        deadline = time.monotonic() + timeout_s
        with Progress(
            TextColumn("rebuilding v{task.fields[version]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("rebuild", total=None, version=version)
            while time.monotonic() < deadline:
                rebuild = _get_status(client)["rebuild"]
                bar.update(
                    task,
                    completed=int(rebuild.get("applied", 0)),
                    total=int(rebuild.get("total", 0)) or None,
                )
                if rebuild.get("state") in ("done", "failed"):
                    break
                time.sleep(0.5)  # progress display refresh
    if rebuild.get("state") != "done":
        console.print(
            f"[red]rebuild {rebuild.get('state')}:[/red] {rebuild.get('error', 'timed out')}"
        )
        raise typer.Exit(1)
    console.print(f"rebuilt into version {version}; readers switched.")


if __name__ == "__main__":
    app()
