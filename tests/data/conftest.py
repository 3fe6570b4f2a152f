"""A local HTTP server whose paths fail, stall or answer as a test asks (it counts every request), and the toy
tokenizers corpus tests encode with."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from fusion.data.synthetic import SyntheticWorld
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig


def png_bytes(colour=(200, 30, 30), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Route:
    """What a path answers: ``body`` with ``status``, after failing the first ``fail_first`` requests with
    ``fail_status`` and sleeping ``sleep`` seconds before every answer."""

    body: bytes = b""
    status: int = 200
    fail_first: int = 0
    fail_status: int = 503
    sleep: float = 0.0


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    requests: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
def http_server() -> Iterator[Server]:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``server.routes`` (404 for anything else)."""
    state = Server("", {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            with state.lock:
                state.requests[self.path] += 1
                n = state.requests[self.path]
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                route = state.routes.get(self.path, Route(status=404))
                time.sleep(route.sleep)
                status = route.fail_status if n <= route.fail_first else route.status
                body = route.body if status == 200 else b"error"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass
            finally:
                with state.lock:
                    state.in_flight -= 1

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def tokenizer() -> MixedTokenizer:
    """Real tokenizers at toy size: a 300-piece BPE and an untrained tiny VQ (8x8 = 64 codes a 32x32 image)."""
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    return MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())
