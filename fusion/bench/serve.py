"""``fusion bench serve``: N concurrent clients against ``fusion serve`` on 127.0.0.1, with continuous batching and
with the scheduler limited to one request at a time, in the same run.

The server runs in this process (its scheduler, app and uvicorn on a port-0 socket); the clients stream
``/v1/generate`` over real HTTP. Requests cycle through text, image, mixed and guided-image prompts of the
synthetic world's captions, each with its own seed; both configurations get the same requests. Per configuration:
aggregate generated tokens/s and images/s, time to first token and to first image (p50 / p95), and requests
lost or failed. ``--rss-requests N`` then serves N more requests (batched) and reports the process's RSS after
the first 100 and after all N, and its peak.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
MIX = ({"mode": "text"}, {"mode": "image"}, {"mode": "mixed"}, {"mode": "image", "guidance_scale": 1.5})


@dataclass(frozen=True)
class Options:
    """The checkpoint, the load and the server's limits."""

    checkpoint: str = field(default="demo_out/checkpoint", metadata={"help": "a fusion checkpoint folder"})
    clients: int = field(default=16, metadata={"help": "concurrent clients"})
    requests: int = field(default=64, metadata={"help": "requests per configuration (the clients share them)"})
    max_batch: int = field(default=32, metadata={"help": "the batched server's --max-batch (rows)"})
    max_new_tokens: int = field(default=48, metadata={"help": "new tokens of text and mixed requests"})
    rss_requests: int = field(default=0, metadata={"help": "after the timed runs, serve this many more and report "
                                                           "RSS after the first 100 and after all (0: skip)"})
    dtype: str = field(default="float32", metadata={"choices": tuple(DTYPES), "help": "the decoder's dtype"})
    compile: bool = field(default=False, metadata={"help": "compile the decode passes"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    out: str = field(default="bench_out", metadata={"help": "folder for serve.csv and serve.md"})


def bodies(n: int, opts: Options) -> list[dict]:
    """``n`` request bodies: the mix in turn, the synthetic world's captions, seed = index."""
    from fusion.data.synthetic import SyntheticWorld

    scenes = SyntheticWorld(1).scenes(n)
    return [{"prompt": [{"text": scenes[i].caption() + ":"}], "seed": i, "stream": True,
             "max_new_tokens": opts.max_new_tokens if MIX[i % len(MIX)]["mode"] != "image" else None,
             **MIX[i % len(MIX)]} for i in range(n)]


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    """Stream one request: seconds to its first text and first image, tokens and images, and its outcome."""
    t0, first_text, first_image, done = time.perf_counter(), None, None, None
    body = {k: v for k, v in body.items() if v is not None}
    async with client.stream("POST", "/v1/generate", json=body) as answer:
        if answer.status_code != 200:
            return {"outcome": f"http {answer.status_code}"}
        event = None
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                now = time.perf_counter() - t0
                if event == "text" and first_text is None:
                    first_text = now
                elif event == "image" and first_image is None:
                    first_image = now
                elif event in ("done", "error"):
                    done = (event, json.loads(line[6:]))
    if done is None or done[0] == "error":
        return {"outcome": "error" if done else "lost"}
    usage = done[1]["usage"]
    return {"outcome": "ok", "first_text": first_text, "first_image": first_image,
            "tokens": usage["generated_tokens"], "images": usage["images"]}


async def load(url: str, work: list[dict], clients: int) -> tuple[list[dict], float]:
    """Every body in ``work`` sent by ``clients`` concurrent clients; (results, wall seconds)."""
    pending = iter(work)
    results: list[dict] = []
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        async def worker() -> None:
            for body in pending:
                results.append(await one_request(client, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - t0


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def summary(name: str, results: list[dict], seconds: float, steps: int, opts: Options) -> dict:
    ok = [r for r in results if r["outcome"] == "ok"]
    pct = lambda xs, q: statistics.quantiles(xs, n=20)[q] if len(xs) >= 2 else (xs[0] if xs else None)  # noqa: E731
    texts = [r["first_text"] for r in ok if r["first_text"] is not None]
    images = [r["first_image"] for r in ok if r["first_image"] is not None]
    return {"config": name, "clients": opts.clients, "requests": len(results), "failed": len(results) - len(ok),
            "tok_s": sum(r["tokens"] for r in ok) / seconds, "images_s": sum(r["images"] for r in ok) / seconds,
            "first_token_p50_s": pct(texts, 9), "first_token_p95_s": pct(texts, 18),
            "first_image_p50_s": pct(images, 9), "first_image_p95_s": pct(images, 18), "seconds": seconds,
            "steps": steps}


def run(opts: Options) -> list[dict]:
    from fusion.api import Fusion
    from fusion.serve.app import create_app
    from fusion.serve.scheduler import Scheduler
    from fusion.serve.server import in_thread

    if opts.threads:
        torch.set_num_threads(opts.threads)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the table
    fusion = Fusion.from_pretrained(opts.checkpoint, device="cpu" if not torch.cuda.is_available() else None,
                                    dtype=DTYPES[opts.dtype])
    work = bodies(opts.requests, opts)
    configs = {"batched": dict(max_batch=opts.max_batch), "one at a time": dict(max_batch=opts.max_batch, max_jobs=1)}
    rows = []
    for name, kw in configs.items():
        scheduler = Scheduler(fusion, max_queue=opts.requests + opts.clients, compile=opts.compile, **kw).start()
        with in_thread(create_app(scheduler, model_name="bench"), scheduler) as url:
            asyncio.run(load(url, work[:min(4, len(work))], min(4, opts.clients)))  # warm up (and compile)
            before = scheduler.stats.steps
            results, seconds = asyncio.run(load(url, work, opts.clients))
            steps = scheduler.stats.steps - before
        rows.append(summary(name, results, seconds, steps, opts))
    rows[0]["vs_one_at_a_time"] = rows[0]["tok_s"] / rows[1]["tok_s"]
    if opts.rss_requests:
        more = bodies(opts.rss_requests, opts)
        scheduler = Scheduler(fusion, max_batch=opts.max_batch, max_queue=opts.rss_requests + opts.clients,
                              compile=opts.compile).start()
        with in_thread(create_app(scheduler, model_name="bench"), scheduler) as url:
            first, _ = asyncio.run(load(url, more[:100], opts.clients))
            after_100 = rss_mb()[0]
            rest, _ = asyncio.run(load(url, more[100:], opts.clients))
            after_all, peak = rss_mb()
        failed = sum(r["outcome"] != "ok" for r in first + rest)
        rows.append({"config": f"RSS over {opts.rss_requests} requests", "requests": len(first + rest),
                     "failed": failed, "rss_after_100_mb": after_100, "rss_after_all_mb": after_all,
                     "rss_growth": after_all / after_100 - 1, "peak_rss_mb": peak})
    columns = dict.fromkeys(k for row in rows for k in row)
    return [{k: row.get(k) for k in columns} for row in rows]
