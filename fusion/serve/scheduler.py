"""The scheduler: one thread owns the model and a ``Slots`` engine of ``max_batch`` rows, and batches jobs
continuously.

At each step boundary the jobs at the head of the queue that fit the free slots are prefilled into them
(``Slots.admit``: exactly as if decoded alone) while the admitted ones keep decoding; one decoder pass then runs
over all of them. A job whose rows are all done, or whose client left, frees its slots at once. A job needing
another guidance form or speculative window than the engine's waits until the engine is empty, which is then
rebuilt for it (first come, first served: the head of the queue is never overtaken). Text and finished images go
to the job's ticket through one worker thread, which also decodes the images (VQ), so that no row waits on it.

``submit`` checks a job at once (rows against ``max_batch``, prompt against the context: a ValueError the app
turns into a 4xx) and queues it (``QueueFull`` past ``max_queue``). ``stop`` takes no more jobs, lets the running
ones finish within a timeout, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from fusion.api import Fusion
from fusion.inference.config import GenerationConfig
from fusion.inference.generate import prepare_documents, stream_decoders
from fusion.inference.noise import expand_rows
from fusion.inference.prompts import PromptBatch, prepare_prompts
from fusion.inference.slots import Group, Slots
from fusion.serve.jobs import Event, Job, Queue, Stats, StepGate, Ticket, Usage
from fusion.tokenizers.grammar import IMAGE_KIND, TEXT_KIND, images_closed
from fusion.tokenizers.mixed import ImageCodes, StreamDecoder

log = logging.getLogger(__name__)


@dataclass
class Running:
    """An admitted job: its rows' slots, their stream decoders, the passes it took part in."""

    ticket: Ticket
    config: GenerationConfig
    group: Group
    prompt_tokens: int
    decoders: list[StreamDecoder]
    passes: int = 1  # its prefill
    started: float = field(default_factory=time.perf_counter)


class Scheduler:
    """Runs submitted jobs on ``fusion``'s model; at most ``max_batch`` rows (guidance copies included) decode
    together, in a cache of the model's whole context per row."""

    def __init__(self, fusion: Fusion, *, max_batch: int = 8, max_queue: int = 64, compile: bool = False,
                 max_jobs: int | None = None) -> None:
        if max_batch < 1 or max_queue < 0 or (max_jobs is not None and max_jobs < 1):
            raise ValueError(f"max_batch and max_jobs must be >= 1 and max_queue >= 0, got {max_batch}, "
                             f"{max_jobs}, {max_queue}")
        self.fusion, self.max_batch, self.compile = fusion, max_batch, compile
        self.max_jobs = max_jobs  # jobs decoding at once (None: as many as fit; 1: one at a time, a baseline)
        self.queue = Queue(max_queue)
        self.gate = StepGate()
        self.stats = Stats(max_rows=max_batch)
        self.engine: Slots | None = None
        self.running: list[Running] = []
        self._prepared: dict[str, tuple[PromptBatch, GenerationConfig, list]] = {}  # ticket id -> what admit takes
        self._stop, self._wake, self._accepting = threading.Event(), threading.Event(), True
        self._thread = threading.Thread(target=self._loop, name="fusion-scheduler", daemon=True)
        self._out = ThreadPoolExecutor(1, thread_name_prefix="fusion-deliver")  # in order: text, VQ decodes, done
        self._seconds_per_job = 1.0  # a running mean of job durations, for Retry-After

    # ------------------------------------------------------------ the app's side

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def prepare(self, job: Job) -> tuple[PromptBatch, GenerationConfig, list]:
        """(prompt batch, complete config, seeds) of ``job``, or a ValueError saying why it cannot run."""
        f = self.fusion
        ids, config = prepare_documents(f.model, f.tokenizer, [job.prompt], job.config, {})
        rows = expand_rows(ids, job.seed, config.num_return_sequences)
        batch = prepare_prompts(rows.prompts, f.model.cfg.vocab, f.tokenizer.tokens_per_image, config,
                                config.max_new_tokens, f.model.cfg.max_seq_len)
        if len(batch.rows) > self.max_batch:
            raise ValueError(f"the request needs {len(batch.rows)} rows (num_return_sequences x guidance copies); "
                             f"this server decodes at most {self.max_batch} (--max-batch)")
        return batch, config, rows.seeds

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Check and queue ``job``; its events arrive on the returned ticket, on ``loop`` (default: the running
        one, if any; else for a thread to read). Encoding the prompt's images takes time: an asyncio caller runs
        this in a worker thread and passes its loop."""
        if not self._accepting:
            raise RuntimeError("the server is shutting down")
        prepared = self.prepare(job)
        ticket = Ticket(job, loop)
        self._prepared[ticket.id] = prepared
        try:
            self.queue.push(ticket, retry_after=max(1, round(self._seconds_per_job * (len(self.queue) + 1))))
        except Exception:
            del self._prepared[ticket.id]
            raise
        self.stats.queued = len(self.queue)
        self._wake.set()
        return ticket

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new jobs; let running ones finish for ``timeout`` s, then cancel the rest; join the thread."""
        self._accepting = False
        for ticket in self.queue.drain():
            self._prepared.pop(ticket.id, None)
            self._finish_ticket(ticket, Event("error", message="the server is shutting down"), "error")
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        self.gate.release()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
        self._out.shutdown(wait=True)

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._admit()
            if not self.running:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            if not self.gate.wait_turn(self._stop):
                break
            try:
                self.engine.step()
                self.stats.steps += 1
                for job in self.running:
                    job.passes += 1
                self._route()
            except Exception as e:  # the engine itself failed: every running job ends, the server goes on
                log.exception("a decoder pass failed")
                for job in list(self.running):
                    self._end(job, Event("error", message=f"the decoder pass failed: {e}"), "error")
                self.engine = None
            self.gate.took_step()
        for job in list(self.running):
            self._end(job, self._done(job, cancelled=True), "cancelled")

    def _admit(self) -> None:
        """Prefill the queue's head jobs into free slots, while they fit and match the engine."""
        while (ticket := self.queue.peek()) is not None:
            batch, config, seeds = self._prepared[ticket.id]
            if ticket.cancelled.is_set():
                self.queue.pop()
                del self._prepared[ticket.id]
                self._finish_ticket(ticket, Event("done", finish_reasons=["cancelled"] * batch.batch,
                                                  usage=Usage(0, 0, 0, 0)), "cancelled")
                continue
            if self.engine is None or (not self.running and not self.engine.compatible(config)):
                self.engine = Slots(self.fusion.model, rows=self.max_batch, length=self.fusion.model.cfg.max_seq_len,
                                    tokens_per_image=self.fusion.tokenizer.tokens_per_image, config=config,
                                    track_seen=True, compile=self.compile)
            if not self.engine.compatible(config) or len(batch.rows) > len(self.engine.free) or \
                    (self.max_jobs is not None and len(self.running) >= self.max_jobs):
                return
            self.queue.pop()
            del self._prepared[ticket.id]
            self.stats.queued = len(self.queue)
            try:
                group = self.engine.admit(batch, config, seeds)
            except Exception as e:  # e.g. NaN weights in the prefill: this job only
                self._finish_ticket(ticket, Event("error", message=str(e)), "error")
                continue
            decoders = stream_decoders(self.fusion.tokenizer, config, batch.batch)
            job = Running(ticket, config, group, len(batch.rows[0]) - len(batch.prefixes[0]), decoders)
            self.running.append(job)
            self.stats.busy_rows = sum(len(j.group.slots) for j in self.running)
            for b, prefix in enumerate(batch.prefixes):
                self._feed(job, b, prefix)
            self._route_job(job, *self.engine.read(group.rows))

    def _route(self) -> None:
        """After a pass: end the jobs whose clients left, and hand out every other job's tokens (one host sync)."""
        for job in [j for j in self.running if j.ticket.cancelled.is_set()]:
            self._end(job, self._done(job, cancelled=True), "cancelled")
        jobs = list(self.running)
        new, done, broken = self.engine.read([row for job in jobs for row in job.group.rows])
        start = 0
        for job in jobs:
            end = start + len(job.group.rows)
            self._route_job(job, new[start:end], done[start:end], broken[start:end])
            start = end

    def _route_job(self, job: Running, new: list[list[int]], done: list[bool], broken: list[bool]) -> None:
        """Hand out a job's new tokens; end it when every row is done (or one broke)."""
        if any(broken):
            self._end(job, Event("error", message="the model's logits became NaN or inf, or nothing was left to "
                                                  "sample; nothing it samples is meaningful"), "error")
            return
        for b, ids in enumerate(new):
            self._feed(job, b, ids)
            if job.decoders[b].stopped:
                self.engine.finish([job.group.rows[b]])
                done[b] = True
        if all(done):
            self._end(job, self._done(job, cancelled=False), "stop")

    def _feed(self, job: Running, b: int, ids: list[int]) -> None:
        decoder = job.decoders[b]
        for t in ids:
            if decoder.stopped:
                return
            for piece in decoder.feed(t):
                self._out.submit(self._deliver, job.ticket, b, piece)

    def _done(self, job: Running, cancelled: bool) -> Event:
        """A job's done event: per row its finish reason (and ids), the job's usage."""
        ids = [d.ids for d in job.decoders]
        v, budget = self.fusion.model.cfg.vocab, job.config.max_new_tokens
        reasons = ["cancelled" if cancelled else "stop" if (row and (row[-1] == v.eos_id or (
            job.config.mode == "image" and row[-1] == v.eoi_id))) or len(row) < budget or d.stopped else "length"
            for row, d in zip(ids, job.decoders, strict=True)]
        for b, d in enumerate(job.decoders):
            for piece in d.flush():
                self._out.submit(self._deliver, job.ticket, b, piece)
        usage = Usage(job.prompt_tokens, sum(map(len, ids)), sum(images_closed(r, v) for r in ids), job.passes)
        return Event("done", finish_reasons=reasons, usage=usage, ids=ids if job.ticket.job.return_ids else None)

    def _end(self, job: Running, event: Event, outcome: str) -> None:
        """Free the job's slots at once and send its last event."""
        self.running.remove(job)
        if self.engine is not None:
            self.engine.release(job.group)
        self.stats.busy_rows = sum(len(j.group.slots) for j in self.running)
        outcome = event.finish_reasons[0] if event.kind == "done" and event.finish_reasons else outcome
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - job.started)
        self._finish_ticket(job.ticket, event, outcome)

    def _finish_ticket(self, ticket: Ticket, event: Event, outcome: str) -> None:
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        self._out.submit(ticket.put, event)

    def _deliver(self, ticket: Ticket, row: int, piece: str | ImageCodes) -> None:
        """On the worker: a text piece as it is, an image's codes decoded to a PIL image (VQ)."""
        if isinstance(piece, str):
            ticket.put(Event(TEXT_KIND, row, text=piece))
            return
        try:
            with torch.no_grad():
                image = self.fusion.tokenizer.image.decode_images(piece.codes[None])[0]
        except Exception as e:  # the job ends with this error; its done event, which follows, is never read
            log.exception("decoding an image failed")
            ticket.put(Event("error", message=f"decoding an image failed: {e}"))
            return
        ticket.put(Event(IMAGE_KIND, row, image=image))
