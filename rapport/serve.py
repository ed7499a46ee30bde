"""Serve one service's app on uvicorn, its workers each on a listening socket of their own.

`uvicorn --workers` shares one listening socket: the worker that wakes first accepts a whole
burst of new connections, so a client's pool can land on one worker while the other idles.
wrk's 32 connections to the invitation service's two workers landed 32/0 in one run and
18/14 in the next: 1,491 against 2,255 invites/s. With a socket per worker (SO_REUSEPORT on
one port) the kernel spreads connections over them by their address hash. uvicorn's own
supervisor still starts, health-checks and restarts the workers.

Usage (rapport.supervisor runs it): python -m rapport.serve <module:factory> --host H
--port P [--workers N] [--timeout-graceful-shutdown S].
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Annotated

import typer
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

log = logging.getLogger("uvicorn.error")


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on `port` that other processes of this user may share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class OwnSocketWorker(multiprocess.Process):
    """A uvicorn worker that binds its own socket instead of taking its parent's."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        try:
            own = listen(self.config.host, self.config.port, self.config.backlog)
        except OSError as exc:
            # The port is another's: every restart would fail the same way, so the
            # supervisor is told to stop, as uvicorn's own bind failure does.
            log.error("cannot listen on %s:%d: %s", self.config.host, self.config.port, exc)
            sys.exit(STARTUP_FAILURE)
        super().target([own])


def serve(config: uvicorn.Config) -> None:
    if config.workers <= 1:
        uvicorn.Server(config).run()
        return
    # The supervisor makes (and remakes) its workers through this module-level name.
    multiprocess.Process = OwnSocketWorker  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[]).run()


def main(
    app: Annotated[str, typer.Argument(help="The app factory, as module:function")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    timeout_graceful_shutdown: Annotated[int, typer.Option()] = 10,
) -> None:
    serve(
        uvicorn.Config(
            app,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            timeout_graceful_shutdown=timeout_graceful_shutdown,
        )
    )


if __name__ == "__main__":
    typer.run(main)
