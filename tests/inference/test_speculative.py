"""Speculative decoding is lossless: images drawn speculatively follow plain sampling's exact distribution.

The fixture's images are 4 codes from a codebook of 4, so all 256 images can be enumerated: each one's exact
probability under plain sampling comes from full-recompute forwards and float64 processors written here. Twenty
thousand images drawn speculatively (one batch, a seed per row) must pass a chi-square test against it, and wrong
acceptance rules (swapped in at ``speculative.accept``) must fail it by a wide margin. A near-uniform random model
could not tell a wrong q from a right one, so the fixture's next-code distributions are peaked and follow the
previous code (both asserted).
"""

import itertools
import math

import pytest
import torch

from fusion.inference import speculative
from fusion.inference.generate import generate_ids
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab

VOCAB = Vocab.build(6, 4)
N, CODES, DRAWS = 4, 4, 20_000
PEAKS = (0.55, 0.65, 0.75, 0.85)  # each code's chance of being repeated next
PROMPT = [VOCAB.bos_id, VOCAB.text_start + 1, VOCAB.text_start + 2]


@pytest.fixture(scope="module")
def model() -> Transformer:
    """A tied two-layer model whose code embeddings are orthogonal: after code c, code c again with ``PEAKS[c]``
    (the norm scales every embedding to the same length, so the tied LM head's logit for repeating c is what the
    embedding's length sets); the random blocks add a little dependence on the rest of the context."""
    d = 32
    cfg = ModelConfig(vocab=VOCAB, dim=d, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32,
                      tie_embeddings=True)
    torch.manual_seed(0)
    m = Transformer(cfg)
    basis = torch.linalg.qr(torch.randn(d, d))[0][:, :CODES].T
    with torch.no_grad():
        for c, peak in enumerate(PEAKS):
            m.embed.weight[VOCAB.image_start + c] = math.log((CODES - 1) * peak / (1 - peak)) * basis[c]
        m.embed.weight[VOCAB.boi_id] = m.embed.weight[VOCAB.image_start + 1]  # the first code: mostly 1
        m.norm.weight.fill_(d ** -0.5)
    return m.eval()


def code_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """Full recompute (no cache) of each row, fp64 logits of the codes at its last position [R, CODES]."""
    with torch.no_grad():
        return torch.stack([model(torch.tensor([r]))[0, -1, VOCAB.image_start:VOCAB.image_start + CODES].double()
                            for r in rows])


def target(model, codes: tuple[int, ...], *, temperature=1.0, top_k=0, guidance=1.0, penalty=1.0) -> torch.Tensor:
    """Plain sampling's next-code distribution after ``codes``, written out in float64."""
    ids = lambda head: head + [VOCAB.boi_id] + [VOCAB.image_start + c for c in codes]  # noqa: E731
    cond, uncond = code_logits(model, [ids(PROMPT), ids(PROMPT[:1])])  # guidance drops the text, keeps bos
    x = cond
    if guidance != 1.0:
        mixed = (uncond.softmax(-1) + guidance * (cond.softmax(-1) - uncond.softmax(-1))).clamp_min(0)
        x = mixed.log()
    for c in set(codes):  # CTRL's repetition penalty on the codes already in the image
        x[c] = x[c] / penalty if x[c] > 0 else x[c] * penalty
    if top_k:
        x = x.masked_fill(x < x.topk(top_k).values[-1], float("-inf"))
    return (x / temperature).softmax(-1)


def exact_distribution(model, **processors) -> dict[tuple[int, ...], float]:
    """Every image's probability: the product of its codes' conditionals."""
    cond = {c: target(model, c, **processors) for n in range(N) for c in itertools.product(range(CODES), repeat=n)}
    return {img: math.prod(float(cond[img[:i]][img[i]]) for i in range(N))
            for img in itertools.product(range(CODES), repeat=N)}


def speculative_counts(model, **kw) -> dict[tuple[int, ...], int]:
    out = generate_ids(model, [torch.tensor(PROMPT)], tokens_per_image=N, mode="image", speculative=True,
                       seed=1000, num_return_sequences=DRAWS, **kw)
    counts: dict[tuple[int, ...], int] = {}
    for ids in out:
        assert ids[0] == VOCAB.boi_id and ids[-1] == VOCAB.eoi_id and len(ids) == N + 2
        img = tuple((ids[1:-1] - VOCAB.image_start).tolist())
        counts[img] = counts.get(img, 0) + 1
    return counts


def chi_square_p(counts: dict, probs: dict) -> float:
    """p-value of the chi-square test; cells expecting fewer than 5 draws are pooled, impossible ones must be empty."""
    total = sum(counts.values())
    assert sum(counts.get(k, 0) for k, p in probs.items() if p == 0) == 0, "an impossible image was drawn"
    cells, pooled = [], [0, 0.0]
    for k, p in probs.items():
        if p > 0:
            if p * total < 5:
                pooled[0] += counts.get(k, 0)
                pooled[1] += p * total
            else:
                cells.append((counts.get(k, 0), p * total))
    cells += [tuple(pooled)] if pooled[1] else []
    stat = sum((o - e) ** 2 / e for o, e in cells)
    return float(torch.special.gammaincc(torch.tensor((len(cells) - 1) / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_the_fixture_is_peaked_and_follows_the_previous_code(model):
    conds = {c: target(model, c) for n in range(N) for c in itertools.product(range(CODES), repeat=n)}
    tops = torch.stack([p.max() for p in conds.values()])
    assert 0.5 <= float(tops.min()) and float(tops.max()) <= 0.9
    assert [int(conds[(c,)].argmax()) for c in range(CODES)] == list(range(CODES))  # the previous code leads


@pytest.mark.parametrize("window,coupling", [(2, "maximal"), (3, "maximal"), (5, "maximal"), (3, "gumbel"),
                                             (3, "independent")])
def test_speculative_images_follow_the_exact_distribution(model, window, coupling):
    """W=2 and 3 slide the window within an image; W=5 covers all 4 codes and eoi at once."""
    counts = speculative_counts(model, speculative_window=window, speculative_coupling=coupling)
    assert chi_square_p(counts, exact_distribution(model)) > 1e-3


@pytest.mark.parametrize("processors", [dict(temperature=0.7, top_k=3), dict(guidance=3.0), dict(penalty=1.5)])
def test_processors_and_guidance_keep_the_distribution(model, processors):
    """The window's earlier drafts count as seen by the repetition penalty, as the tokens they become would."""
    names = {"guidance": "guidance_scale", "penalty": "repetition_penalty"}
    kw = {names.get(k, k): v for k, v in processors.items()}
    probs = exact_distribution(model, **processors)
    if "top_k" in processors:
        assert sum(p == 0 for p in probs.values()) > 100  # top-k makes images impossible: none may be drawn
    assert chi_square_p(speculative_counts(model, speculative_window=3, **kw), probs) > 1e-3


def _always_accept(p, q, draft, u):
    return torch.ones_like(draft, dtype=torch.bool), (p - q).clamp_min(0)


def _resample_from_p(p, q, draft, u):
    return RIGHT(p, q, draft, u)[0], p


def _q_of_the_previous_position(p, q, draft, u):
    return RIGHT(p, q.roll(1, dims=1), draft, u)


RIGHT = speculative.accept


@pytest.mark.parametrize("wrong", [_always_accept, _resample_from_p, _q_of_the_previous_position])
def test_wrong_acceptance_rules_fail_the_distribution_test(model, monkeypatch, wrong):
    """The check that the test above can fail: each classic mistake is rejected with p < 1e-6."""
    monkeypatch.setattr(speculative, "accept", wrong)
    counts = speculative_counts(model, speculative_window=4)
    assert chi_square_p(counts, exact_distribution(model)) < 1e-6
