"""Continuous batching: jobs that join a running batch mid-flight, beside jobs in other modes with other knobs,
get token for token what ``Fusion.generate`` gives each alone with the same seed (float64, eager: no rounding
difference between batch shapes can flip a near-tie). The reference is the plain generate call; the engine
under test is the server's scheduler, driven from a thread."""

import pytest
import torch

from fusion.api import Fusion
from fusion.document import Document
from fusion.inference.config import GenerationConfig
from fusion.inference.generate import Generation
from fusion.serve.jobs import Job
from fusion.serve.scheduler import Scheduler

from .conftest import bias_logits, make_model

CAPTIONS = ["a red circle", "two blue squares", "a small green triangle on the left", "big", "a yellow star",
            "three red circles and a blue square"]
JOBS = [  # (caption index, knobs, seed): text, image, mixed, guided, 3-way guided, filters, greedy, two samples
    (0, dict(mode="text", max_new_tokens=12), 1),
    (1, dict(mode="image"), 2),
    (2, dict(mode="mixed", max_new_tokens=90), 3),
    (3, dict(mode="image", guidance_scale=2.5), 4),
    (4, dict(mode="text", max_new_tokens=20, temperature=0.7, top_k=5), 5),
    (5, dict(mode="mixed", max_new_tokens=100, guidance_scale=2.0, top_p=0.9), 6),
    (0, dict(mode="image", do_sample=False), 7),
    (1, dict(mode="text", max_new_tokens=16, repetition_penalty=1.3), 8),
    (2, dict(mode="image", guidance_scale=3.0, guidance_form="probs", temperature=0.8), 9),
    (3, dict(mode="mixed", max_new_tokens=80, num_return_sequences=2), 10),
    (4, dict(mode="text", max_new_tokens=8, do_sample=False), 11),
    (5, dict(mode="image", top_k=20), 12),
    (0, dict(mode="mixed", max_new_tokens=96, repetition_penalty=1.2, temperature=0.9), 13),
    (1, dict(mode="text", max_new_tokens=24, top_p=0.8), 14),
    (2, dict(mode="image", guidance_scale=2.0, top_k=8, temperature=1.2), 15),
    (3, dict(mode="text", max_new_tokens=10), 16),
]


@pytest.fixture
def fusion_model(tokenizer):
    """The tiny random model in float64, with boi favoured so that mixed rows open images."""
    model = make_model(tokenizer.vocab, seed=0, max_seq_len=256).double()
    hook = bias_logits(model, [tokenizer.vocab.boi_id], 3.0)
    yield Fusion(model, tokenizer)
    hook.remove()


def alone(fusion: Fusion, caption: str, knobs: dict, seed: int) -> list[list[int]]:
    record = Generation()
    fusion.generate(caption, seed=seed, record=record, **knobs)
    return record.ids


def test_jobs_joining_mid_flight_get_what_they_get_alone(fusion_model):
    scheduler = Scheduler(fusion_model, max_batch=8, max_queue=len(JOBS)).start()
    try:
        tickets = [scheduler.submit(Job(Document.of(CAPTIONS[c]), GenerationConfig(**knobs), seed, return_ids=True))
                   for c, knobs, seed in JOBS]
        results = [list(t) for t in tickets]
    finally:
        scheduler.stop(timeout=5)
    mixed_images, passes = 0, 0
    for (c, knobs, seed), events in zip(JOBS, results, strict=True):
        done = events[-1]
        assert done.kind == "done", events[-1]
        want = alone(fusion_model, CAPTIONS[c], knobs, seed)
        assert done.ids == want, (CAPTIONS[c], knobs)
        for row, ids in enumerate(want):  # the streamed pieces are that row's text and images, in order
            text = "".join(e.text for e in events if e.kind == "text" and e.row == row)
            doc = fusion_model.tokenizer.decode(ids, strict=False)
            assert text == "".join(doc.texts)
            assert sum(e.kind == "image" and e.row == row for e in events) == len(doc.images)
        if knobs["mode"] == "mixed":
            mixed_images += sum(ids.count(fusion_model.model.cfg.vocab.eoi_id) for ids in want)
        passes += done.usage.forward_passes
    assert mixed_images >= 2  # mixed rows wrote images too, beside text
    assert scheduler.stats.steps < passes - len(JOBS)  # jobs shared passes: they ran side by side
    assert scheduler.stats.outcomes.get("error", 0) == 0


SPECULATIVE = [  # windows of 4 per image row; a text job needs no window, so it waits for an engine of its own
    (1, dict(mode="image", speculative=True, speculative_window=4), 21),
    (2, dict(mode="mixed", max_new_tokens=90, speculative=True, speculative_window=4, guidance_scale=2.0), 22),
    (3, dict(mode="text", max_new_tokens=12, speculative=True, speculative_window=4), 23),
    (4, dict(mode="image", speculative=True, speculative_window=4, temperature=0.8, top_k=10), 24),
    (5, dict(mode="image", speculative=True, speculative_window=4, do_sample=False), 25),
]


def test_speculative_jobs_share_windows_and_get_what_they_get_alone(fusion_model):
    scheduler = Scheduler(fusion_model, max_batch=6, max_queue=len(SPECULATIVE)).start()
    try:
        tickets = [scheduler.submit(Job(Document.of(CAPTIONS[c]), GenerationConfig(**knobs), seed, return_ids=True))
                   for c, knobs, seed in SPECULATIVE]
        done = [list(t)[-1] for t in tickets]
    finally:
        scheduler.stop(timeout=5)
    for (c, knobs, seed), event in zip(SPECULATIVE, done, strict=True):
        record = Generation()
        fusion_model.generate(CAPTIONS[c], seed=seed, record=record, **knobs)
        assert event.kind == "done" and event.ids == record.ids, knobs
        assert event.usage.forward_passes == record.passes  # the same window passes as alone


def test_a_cancelled_job_frees_its_slots_within_one_step(fusion_model):
    scheduler = Scheduler(fusion_model, max_batch=4, max_queue=4)
    scheduler.gate.hold()
    long = scheduler.submit(Job(Document.of("a red circle"), GenerationConfig(mode="text", max_new_tokens=200),
                                seed=0))
    other = scheduler.submit(Job(Document.of("a blue square"), GenerationConfig(mode="image"), seed=1))
    scheduler.start()
    try:
        scheduler.gate.advance(1)
        assert scheduler.stats.busy_rows == 2
        long.cancel()
        scheduler.gate.advance(1)
        assert scheduler.stats.busy_rows == 1 and scheduler.stats.outcomes == {"cancelled": 1}
        scheduler.gate.release()
        assert [e.kind for e in long][-1] == "done"
        events = list(other)
        assert events[-1].kind == "done" and events[-1].finish_reasons == ["stop"]
    finally:
        scheduler.stop(timeout=5)


def test_a_job_that_does_not_fit_is_refused_at_once(fusion_model):
    scheduler = Scheduler(fusion_model, max_batch=2, max_queue=1)
    with pytest.raises(ValueError, match="at most 2"):
        scheduler.submit(Job(Document.of("x"), GenerationConfig(mode="image", guidance_scale=2.0,
                                                                num_return_sequences=2)))
    with pytest.raises(ValueError, match="context"):
        scheduler.submit(Job(Document.of("x " * 300), GenerationConfig(mode="text", max_new_tokens=10)))


def test_a_row_gone_non_finite_ends_its_job_only(fusion_model):
    scheduler = Scheduler(fusion_model, max_batch=4, max_queue=4)
    scheduler.gate.hold()
    good = scheduler.submit(Job(Document.of("a red circle"), GenerationConfig(mode="text", max_new_tokens=20),
                                seed=0, return_ids=True))
    bad = scheduler.submit(Job(Document.of("a blue square"), GenerationConfig(mode="text", max_new_tokens=20),
                               seed=1))
    scheduler.start()
    try:
        scheduler.gate.advance(1)
        slot = scheduler.running[1].group.rows[0]
        hook = fusion_model.model.lm_head.register_forward_hook(  # NaN logits for the bad job's slot only
            lambda mod, inp, out: out.index_fill(0, torch.tensor([slot]), float("nan")) if out.dim() == 2 else out)
        scheduler.gate.advance(1)
        hook.remove()
        scheduler.gate.release()
        assert [e.kind for e in bad][-1] == "error"
        done = list(good)[-1]
        assert done.kind == "done" and done.ids == alone(fusion_model, "a red circle", dict(mode="text",
                                                                                           max_new_tokens=20), 0)
    finally:
        scheduler.stop(timeout=5)
