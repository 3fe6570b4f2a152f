"""The decode step compiles as ONE graph (fullgraph), really runs compiled, and is not recompiled over mixed text /
image rows or when only sampling values change (past Dynamo's recompile limit it would silently run eagerly).

Dynamo decides graph breaks and recompiles before any backend sees the graph, so these tests compile with a
backend that runs the captured graph eagerly and counts its builds and runs (seconds instead of Inductor's
minute); ``fusion bench cpu`` times the Inductor build.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from fusion.inference import step
from fusion.inference.generate import generate_ids
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
        kw = dict(max_new_tokens=24, tokens_per_image=N, mode="mixed", seed=[1, 2, 3, 4])
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
