"""The `rapport` command line."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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
            signal.signal(signal.SIGTERM, lambda *_: supervisor.request_stop())
            try:
                supervisor.start_all()
                _print_ready(infra.kafka_bootstrap, infra.redis_url, services, token, started)
                supervisor.watch()
            except KeyboardInterrupt:
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


if __name__ == "__main__":
    app()
