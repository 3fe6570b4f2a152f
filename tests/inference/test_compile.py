"""Each kind of decode pass (one token, or a speculative window) compiles as ONE graph (fullgraph), really runs
compiled, and is not recompiled over mixed text / image rows, as rows accept different counts, when only sampling
values change, or for each new prompt length (past Dynamo's recompile limit, fullgraph makes that an error).

Dynamo decides graph breaks and recompiles before any backend sees the graph, so these tests compile with a
backend that runs the captured graph eagerly and counts its builds and runs (seconds instead of Inductor's
minute); ``fusion bench cpu`` times the Inductor build.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from fusion.inference import step
from fusion.inference.generate import generate_ids
from fusion.model.cache import bucket_length
from fusion.vocab import Vocab

from .conftest import bias_logits, make_model

VOCAB = Vocab.build(40, 24)
N = 6


class CountingBackend:
    """A Dynamo backend: the captured graph as it is, counting builds (compiles) and calls (compiled runs)."""

    def __init__(self) -> None:
        self.builds, self.calls = 0, 0

    def __call__(self, graph, example_inputs):
        self.builds += 1

        def run(*args):
            self.calls += 1
            return graph(*args)

        return run


@pytest.fixture
def backend(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(step, "COMPILE_BACKEND", counting)
    monkeypatch.setattr(step, "_compiled", {})
    torch._dynamo.reset()
    counters.clear()
    yield counting
    torch._dynamo.reset()


def prompts():
    g = torch.Generator().manual_seed(0)
    rows = [torch.cat([torch.tensor([VOCAB.bos_id]), torch.randint(VOCAB.text_start, VOCAB.text_start + 40, (n,),
                                                                     generator=g)]) for n in (3, 6, 4)]
    return rows + [torch.cat([rows[0], torch.tensor([VOCAB.boi_id]), VOCAB.image_ids(torch.tensor([1, 2]))])]


def test_decode_step_is_one_graph_that_values_do_not_recompile(backend):
    model = make_model(VOCAB, seed=1)
    hook = bias_logits(model, [VOCAB.boi_id], 3.0)  # rows enter and leave images at different steps
    try:
        kw = dict(max_new_tokens=24, tokens_per_image=N, mode="mixed", seed=[1, 2, 3, 4], speculative=False)
        base = dict(temperature=0.9, top_k=8, top_p=0.9, guidance_scale=2.0)
        compiled = generate_ids(model, prompts(), compile=True, **kw, **base)
        eager = generate_ids(model, prompts(), compile=False, **kw, **base)
        assert [c.tolist() for c in compiled] == [e.tolist() for e in eager]
        assert any(VOCAB.boi_id in c.tolist() for c in compiled[:3]) and len(compiled[0]) > 12  # rows mixed modes
        assert backend.builds == 1 and counters["stats"]["unique_graphs"] == 1  # one graph (fullgraph: no breaks)
        assert backend.calls == 23  # ran compiled for every step after the (eager) prefill
        with torch._dynamo.config.patch(error_on_recompile=True):
            for values in (dict(temperature=0.5, top_k=20, top_p=0.7, guidance_scale=3.0),
                           dict(temperature=1.3, top_k=2, top_p=0.95, guidance_scale=1.5)):
                again = generate_ids(model, prompts(), compile=True, **kw, **values)
                assert [a.tolist() for a in again] == [e.tolist() for e in
                                                        generate_ids(model, prompts(), **kw, **values)]
    finally:
        hook.remove()
    assert backend.builds == 1 and backend.calls == 3 * 23


def test_the_speculative_window_is_one_graph_whatever_each_row_accepts(backend):
    """Mixed rows: a pass is a window when any row is inside an image, else one token; each compiles once."""
    model = make_model(VOCAB, seed=1)
    hook = bias_logits(model, [VOCAB.boi_id], 1.0)  # images now and then: some passes hold none
    try:
        kw = dict(max_new_tokens=40, tokens_per_image=N, mode="mixed", seed=[1, 2, 3, 4], speculative=True,
                  speculative_window=4, temperature=0.9, top_k=8, guidance_scale=2.0)
        compiled = generate_ids(model, prompts(), compile=True, **kw)
        assert [c.tolist() for c in compiled] == [e.tolist() for e in generate_ids(model, prompts(), **kw)]
        images = sum(int((c == VOCAB.eoi_id).sum()) for c in compiled)
        assert images >= 4 and backend.builds == 2 and counters["stats"]["unique_graphs"] == 2
        with torch._dynamo.config.patch(error_on_recompile=True):  # other seeds: other acceptance counts
            for seeds in ([5, 6, 7, 8], [9, 10, 11, 12]):
                again = generate_ids(model, prompts(), compile=True, **{**kw, "seed": seeds, "temperature": 1.2})
                assert [a.tolist() for a in again] == [e.tolist() for e in generate_ids(
                    model, prompts(), **{**kw, "seed": seeds, "temperature": 1.2})]
    finally:
        hook.remove()
    assert backend.builds == 2


@pytest.mark.parametrize("speculative", [False, True])
def test_prompt_lengths_share_a_few_compiled_graphs(backend, speculative):
    """Twelve prompt lengths at batch sizes 1 and 3 (the cache length followed the prompt, and the ninth shape
    was a FailOnRecompileLimitHit): each (batch size, cache bucket) compiles each kind of pass once at most."""
    model = make_model(VOCAB, seed=2)
    g = torch.Generator().manual_seed(0)
    buckets = set()
    for n in range(2, 14):
        for batch in (1, 3):
            rows = [torch.cat([torch.tensor([VOCAB.bos_id]), torch.randint(VOCAB.text_start, VOCAB.text_start + 40,
                                                                             (n - 1,), generator=g)])] * batch
            out = generate_ids(model, rows, compile=True, max_new_tokens=60, tokens_per_image=N, mode="mixed",
                               seed=n, speculative=speculative)
            assert len(out) == batch
            buckets.add((batch, bucket_length(n + 60, model.cfg.max_seq_len)))
    assert len(buckets) == 4  # two cache lengths (64, 80) at each batch size
    assert counters["stats"]["unique_graphs"] <= (2 if speculative else 1) * len(buckets)
