"""Running the app: uvicorn on a socket bound beforehand (port 0 works: the socket says which port it got), and a
shutdown that stops the scheduler too.

On SIGTERM / SIGINT uvicorn stops accepting connections; at the same time the scheduler stops (queued jobs get an
error event, running ones may finish for ``shutdown_timeout`` s and are then cancelled), so open streams end with
their done event and their connections close. uvicorn's graceful timeout, a little longer, is the backstop: a
stream still open then is cut, so nothing blocks the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

GRACE = 5.0  # s past the scheduler's own timeout before uvicorn cuts connections still open


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not yet listening: uvicorn listens once it is ready."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, stopping ``scheduler`` as it shuts down; ``listening`` is set once it accepts."""

    def __init__(self, app, scheduler, *, shutdown_timeout: float = 30.0, log_level: str = "info",
                 on_listening: Callable[[], None] | None = None) -> None:
        super().__init__(uvicorn.Config(app, lifespan="off", log_level=log_level, log_config=None,
                                        timeout_graceful_shutdown=shutdown_timeout + GRACE))
        self.scheduler, self.shutdown_timeout, self.on_listening = scheduler, shutdown_timeout, on_listening
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.listening.set()
            if self.on_listening:
                self.on_listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop, self.shutdown_timeout)
        await super().shutdown(sockets)
        await stopping


def serve(app, sock: socket.socket, scheduler, *, shutdown_timeout: float = 30.0,
          on_listening: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then shut down as the module says and return."""
    # uvicorn re-raises the signal it caught once it has shut down, to the handler it found: let that be a no-op,
    # so a stop by signal returns here and the process exits 0.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        Server(app, scheduler, shutdown_timeout=shutdown_timeout, on_listening=on_listening).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        scheduler.stop(0)  # a no-op after a normal shutdown; after a failed start, the scheduler's thread ends


@contextlib.contextmanager
def in_thread(app, scheduler, *, shutdown_timeout: float = 30.0, log_level: str = "warning") -> Iterator[str]:
    """``app`` served from a thread of this process on a free port of 127.0.0.1 for the length of a ``with``
    (benchmarks, tests); yields its URL. Leaving shuts the server down, which stops ``scheduler``."""
    sock = bind("127.0.0.1", 0)
    server = Server(app, scheduler, shutdown_timeout=shutdown_timeout, log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not server.listening.wait(60):
            raise RuntimeError("the server did not start listening within 60 s")
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the server did not stop within 60 s")
