"""Logits processors against hand computations in float64 Python."""

import math

import pytest
import torch

from fusion.inference import sampling
from fusion.inference.config import GenerationConfig


def logits(seed=0, B=3, V=12):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cfg_on_logits_is_the_formula_on_hand_made_logits():
    cond = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0]])
    uncond = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, -2.0]])
    out = sampling.cfg_mix(cond, uncond, 3.0, "logits")
    assert out.tolist() == [[4.0, -2.0, -5.0], [3.0, -1.0, 7.0]]  # 1 + 3*(2-1), ...
    per_row = sampling.cfg_mix(cond, uncond, torch.tensor([1.0, 0.0]), "logits")
    assert torch.equal(per_row[0], cond[0]) and torch.equal(per_row[1], uncond[1])
    full, image_only, none = logits(1), logits(2), logits(3)
    got = sampling.cfg_mix3(full, image_only, none, text_scale=2.5, image_scale=1.5, form="logits")
    want = none + 1.5 * (image_only - none) + 2.5 * (full - image_only)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


def test_cfg_on_probabilities_mixes_softmaxes_and_clamps_at_zero():
    cond, uncond = logits(4, B=2, V=5), logits(5, B=2, V=5)
    got = sampling.cfg_mix(cond, uncond, 3.0, "probs")
    for b in range(2):
        pc, pu = softmax(cond[b].tolist()), softmax(uncond[b].tolist())
        mixed = [u + 3.0 * (c - u) for c, u in zip(pc, pu, strict=True)]
        assert math.isclose(sum(mixed), 1.0, rel_tol=1e-12)  # the mix stays a distribution before clamping
        for g, m in zip(got[b].tolist(), mixed, strict=True):
            assert g == float("-inf") if m <= 0 else math.isclose(g, math.log(m), rel_tol=1e-9)
    assert bool(torch.isinf(got).any())  # scale 3 drives some probabilities below zero: those tokens are out
    torch.testing.assert_close(sampling.cfg_mix(cond, uncond, 1.0, "probs"), cond.log_softmax(-1))  # scale 1
    full, image_only, none = logits(1), logits(2), logits(3)
    got = sampling.cfg_mix3(full, image_only, none, text_scale=2.5, image_scale=1.5, form="probs")
    p = [t.softmax(-1) for t in (full, image_only, none)]
    want = (p[2] + 1.5 * (p[1] - p[2]) + 2.5 * (p[0] - p[1])).clamp_min(0).log()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_cfg_on_probabilities_renormalises_each_copy_over_the_allowed_ids():
    cond, uncond = logits(6, B=2, V=6), logits(7, B=2, V=6)
    allowed = torch.tensor([[False, True, True, False, True, False], [False, False, False, False, False, True]])
    got = sampling.cfg_mix(cond, uncond, 3.0, "probs", allowed=allowed)
    for b in range(2):
        ids = [i for i in range(6) if allowed[b, i]]
        pc = softmax([cond[b, i].item() for i in ids])
        pu = softmax([uncond[b, i].item() for i in ids])
        mixed = {i: u + 3.0 * (c - u) for i, c, u in zip(ids, pc, pu, strict=True)}
        assert math.isclose(sum(mixed.values()), 1.0, rel_tol=1e-12) and max(mixed.values()) > 0
        for i in range(6):
            m = mixed.get(i, 0.0)
            assert got[b, i].item() == float("-inf") if m <= 0 else math.isclose(got[b, i].item(), math.log(m),
                                                                                  rel_tol=1e-9)
    assert got[1, 5].item() == 0.0  # the only allowed id keeps probability 1, whatever the copies think of it


def test_top_k_keeps_the_k_largest_per_row():
    x = logits()
    for k in (1, 4, 12, 50):
        got = sampling.top_k_filter(x, k)
        for b in range(x.shape[0]):
            kth = sorted(x[b].tolist(), reverse=True)[min(k, 12) - 1]
            want = [v if v >= kth else -math.inf for v in x[b].tolist()]
            assert got[b].tolist() == want
    per_row = sampling.top_k_filter(x, torch.tensor([2, 0, 5]))
    assert torch.isfinite(per_row).sum(1).tolist() == [2, 12, 5]
    assert torch.equal(per_row[1], x[1])
    assert torch.equal(per_row[0], sampling.top_k_filter(x[:1], 2)[0])


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    x = logits(4)
    for p in (0.05, 0.3, 0.7, 0.95, 1.0):
        got = sampling.top_p_filter(x, p)
        for b in range(x.shape[0]):
            row = x[b].tolist()
            z = sum(math.exp(v) for v in row)
            order = sorted(range(len(row)), key=lambda i: -row[i])
            keep, mass = set(), 0.0
            for i in order:
                keep.add(i)
                mass += math.exp(row[i]) / z
                if mass >= p:
                    break
            assert {i for i, v in enumerate(got[b].tolist()) if v > -math.inf} == keep, (p, b)
    per_row = sampling.top_p_filter(x, torch.tensor([0.01, 1.0, 0.5]))
    assert torch.isfinite(per_row).sum(1).tolist()[:2] == [1, 12]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    x = torch.tensor([[2.0, -2.0, 1.0], [3.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False], [False, True, True]])
    got = sampling.apply_repetition_penalty(x, seen, torch.tensor([2.0, 4.0]))
    assert got.tolist() == [[1.0, -4.0, 1.0], [3.0, -4.0, 0.125]]


def test_temperature_zero_is_argmax_and_noise_draw_is_the_exponential_race():
    x = logits(5, B=4)
    noise = torch.empty_like(x).exponential_(generator=torch.Generator().manual_seed(1))
    greedy = sampling.sample(x, 0.0, noise)
    assert torch.equal(greedy, x.argmax(-1))
    t = torch.tensor([0.5, 1.0, 0.0, 2.0], dtype=torch.float64)
    got = sampling.sample(x, t, noise)
    for b in range(4):
        if t[b] == 0:
            assert got[b] == x[b].argmax()
            continue
        p = [math.exp(v / t[b].item()) for v in x[b].tolist()]
        assert got[b] == max(range(len(p)), key=lambda i: p[i] / noise[b, i].item())


def test_sampling_frequencies_follow_softmax_over_temperature():
    x = torch.tensor([[1.0, 0.0, -0.5, 0.3]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 20000
    rows = x.expand(n, 4)
    noise = torch.empty(n, 4, dtype=torch.float64).exponential_(generator=g)
    draws = sampling.sample(rows, 0.7, noise)
    freq = torch.bincount(draws, minlength=4).double() / n
    want = (x[0] / 0.7).softmax(-1)
    # 4 standard errors of a binomial proportion
    assert bool(((freq - want).abs() < 4 * (want * (1 - want) / n).sqrt()).all()), (freq, want)


def test_process_masks_then_filters():
    x = logits(6, B=2, V=6)
    allowed = torch.tensor([[True, False, True, False, True, False], [False] * 5 + [True]])
    got = sampling.process(x, allowed=allowed, top_k=2)
    assert not bool(torch.isfinite(got[~allowed]).any())
    assert torch.isfinite(got[0]).sum() == 2 and torch.isfinite(got[1]).sum() == 1
    assert torch.equal(sampling.process(x), x)  # every knob off


@pytest.mark.parametrize("knob,value,match", [
    ("temperature", -0.1, "temperature"), ("top_k", 2.5, "top_k"), ("top_k", -1, "top_k"),
    ("top_p", 0.0, "top_p"), ("top_p", 1.5, "top_p"), ("repetition_penalty", 0.0, "repetition_penalty"),
    ("guidance_scale", -1.0, "guidance_scale"), ("temperature", float("nan"), "temperature")])
def test_out_of_range_knobs_are_refused(knob, value, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**{knob: value})
