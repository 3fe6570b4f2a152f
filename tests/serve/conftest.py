"""A tiny random checkpoint; servers on it in this process (uvicorn in a thread, on a pre-bound port-0 socket),
talked to over real HTTP; and the same checkpoint loaded apart, as the reference the answers are checked against."""

import base64
import contextlib
import io
import json
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from prometheus_client.parser import text_string_to_metric_families

from fusion.api import Fusion
from fusion.data.synthetic import SyntheticWorld
from fusion.images import to_data_uri
from fusion.inference.config import GenerationConfig
from fusion.inference.generate import Generation
from fusion.serve.app import create_app
from fusion.serve.scheduler import Scheduler
from fusion.serve.server import in_thread
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig

from ..inference.conftest import one_thread  # noqa: F401  (autouse: one torch thread here too)
from ..model.conftest import make_model

PROMPT = "a large red circle:"
# The checkpoint's generation defaults, which a request without knobs gets (so they are not GenerationConfig()'s).
DEFAULTS = GenerationConfig(temperature=0.8, top_k=50)
MAX_SEQ_LEN = 1024  # room for a stream long enough to be open when the server is stopped
MAX_BATCH = 4


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    tokenizer = MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())
    path = tmp_path_factory.mktemp("checkpoint")
    Fusion(make_model(0, vocab=tokenizer.vocab, max_seq_len=MAX_SEQ_LEN), tokenizer, DEFAULTS).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reference(checkpoint) -> Fusion:
    """The checkpoint loaded apart from every server."""
    return Fusion.from_pretrained(checkpoint, device="cpu")


LONG = dict(prompt=PROMPT, mode="text", do_sample=False, max_new_tokens=1000)  # a job that runs for seconds


@pytest.fixture(scope="session")
def long_job_runs_to_its_budget(reference) -> bool:
    """Whether ``LONG`` (greedy) runs to its budget with no eos: then only the client or the server ends it early."""
    record = Generation()
    reference.generate(PROMPT, record=record, **{k: v for k, v in LONG.items() if k != "prompt"})
    return len(record.ids[0]) == LONG["max_new_tokens"]


class Live:
    """A running server: its URL, scheduler, app and an HTTP client."""

    def __init__(self, url: str, scheduler, app) -> None:
        self.url, self.scheduler, self.app = url, scheduler, app
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def generate(self, **body) -> httpx.Response:
        return self.client.post("/v1/generate", json=body)

    def stream(self, **body) -> list[tuple[str, dict]]:
        with self.client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            return list(sse_events(r))

    def scrape(self) -> dict:
        """/metrics as {(sample name, ((label, value), ...)): value}."""
        r = self.client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text) for s in family.samples}


@contextlib.contextmanager
def live_server(checkpoint, *, max_batch: int = MAX_BATCH, max_queue: int = 8, dtype: torch.dtype | None = None,
                **app_options):
    scheduler = Scheduler(Fusion.from_pretrained(checkpoint, device="cpu", dtype=dtype), max_batch=max_batch,
                          max_queue=max_queue).start()
    app = create_app(scheduler, model_name="tiny", **app_options)
    with in_thread(app, scheduler, shutdown_timeout=5) as address:
        live = Live(address, scheduler, app)
        try:
            yield live
        finally:
            scheduler.gate.release()
            live.client.close()


@pytest.fixture(scope="module")
def live(checkpoint):
    with live_server(checkpoint) as server:
        yield server


def sse_events(response: httpx.Response):
    """(event, data) of each Server-Sent Event; data parsed as JSON but for OpenAI's final ``[DONE]``."""
    kind, data = None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            payload = "\n".join(data)
            yield kind, payload if payload == "[DONE]" else json.loads(payload)
            kind, data = None, []


def wait_for(condition, timeout: float = 60.0, what: str = "the condition"):
    """Poll ``condition`` until it holds (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.01)


def picture(seed: int = 0) -> PILImage.Image:
    return PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def png_uri(image: PILImage.Image) -> str:
    return to_data_uri(image)


def from_uri(uri: str) -> PILImage.Image:
    assert uri.startswith("data:image/png;base64,")
    image = PILImage.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def png_claiming(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
