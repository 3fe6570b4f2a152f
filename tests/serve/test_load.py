"""Exactness under load: 16 concurrent clients on 127.0.0.1, each request joining the running batch when slots free
up, beside requests in other modes with other knobs, lengths and seeds; each gets token for token what
``Fusion.generate`` gives it alone (both sides in float64 and eager, so no rounding difference between batch
shapes can flip a near-tie). Also: a body over the size limit is refused before it is read."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from fusion.api import Fusion
from fusion.inference.generate import Generation
from fusion.serve import streams

from .conftest import live_server, sse_events

CAPTIONS = ["a large red circle:", "two blue squares", "a small green triangle on the left", "big yellow", "star"]
REQUESTS = [  # knobs, seed; every other one streamed
    (dict(mode="text", max_new_tokens=12), 1), (dict(mode="image"), 2), (dict(mode="mixed", max_new_tokens=90), 3),
    (dict(mode="image", guidance_scale=2.5), 4), (dict(mode="text", max_new_tokens=20, temperature=0.7, top_k=5), 5),
    (dict(mode="mixed", max_new_tokens=40, guidance_scale=2.0, top_p=0.9), 6), (dict(mode="image", do_sample=False), 7),
    (dict(mode="text", max_new_tokens=16, repetition_penalty=1.3), 8),
    (dict(mode="image", guidance_scale=3.0, temperature=0.8, top_k=20), 9),
    (dict(mode="mixed", max_new_tokens=30, num_return_sequences=2), 10), (dict(mode="text", do_sample=False,
                                                                                max_new_tokens=8), 11),
    (dict(mode="image", top_p=0.8), 12), (dict(mode="text", max_new_tokens=44, repetition_penalty=1.2), 13),
    (dict(mode="text", max_new_tokens=24, top_p=0.8), 14), (dict(mode="image", guidance_scale=2.0, top_k=8), 15),
    (dict(mode="text", max_new_tokens=10, temperature=1.3), 16),
]


def served(url: str, i: int) -> list[list[int]]:
    knobs, seed = REQUESTS[i]
    body = dict(prompt=[{"text": CAPTIONS[i % len(CAPTIONS)]}], seed=seed, return_ids=True, **knobs)
    with httpx.Client(base_url=url, timeout=300) as client:
        if i % 2:
            with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
                assert r.status_code == 200, r.read()
                kind, done = list(sse_events(r))[-1]
            assert kind == "done", done
            return done["ids"]
        r = client.post("/v1/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()["ids"]


def test_sixteen_concurrent_clients_get_what_each_gets_alone(checkpoint):
    reference = Fusion.from_pretrained(checkpoint, device="cpu", dtype=torch.float64)
    with live_server(checkpoint, max_batch=8, max_queue=len(REQUESTS), dtype=torch.float64) as live:
        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            got = list(pool.map(lambda i: served(live.url, i), range(len(REQUESTS))))
        steps = live.scheduler.stats.steps
    passes = 0
    for i, ((knobs, seed), ids) in enumerate(zip(REQUESTS, got, strict=True)):
        record = Generation()
        reference.generate(CAPTIONS[i % len(CAPTIONS)], seed=seed, record=record, **knobs)
        assert ids == record.ids, (i, knobs)
        passes += record.passes
    assert steps < passes - len(REQUESTS)  # the requests shared decoder passes: they ran side by side


def test_a_body_over_the_limit_is_refused_before_it_is_read(live, monkeypatch):
    monkeypatch.setattr(streams, "MAX_BODY_BYTES", 1000)
    big = live.client.post("/v1/generate", content=b'{"prompt": "' + b"x" * 2000 + b'"}',
                           headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["type"] == "too_large"
    chunked = live.client.post("/v1/generate", content=iter([b'{"prompt": "', b"x" * 2000, b'"}']))
    assert chunked.status_code == 413  # no Content-Length: counted as it arrives
    monkeypatch.undo()
    assert live.generate(prompt="a red circle", mode="text", max_new_tokens=4).status_code == 200
