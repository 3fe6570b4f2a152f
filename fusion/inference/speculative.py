"""Speculative Jacobi decoding of image spans: a pass verifies a window of guessed codes and emits 1..W tokens.

A row inside an image feeds W tokens a pass: its last token, then W-1 draft codes. The one forward gives the
target distribution ``p`` at every window position (guided and processed exactly as plain sampling's). Draft j
is accepted with probability ``min(1, p(d) / q(d))``, ``q`` being the distribution it was drawn from; at the
first rejection the pass ends with a token drawn from ``max(0, p - q)``, and when every draft is accepted, with
one drawn from the next position's ``p``. Every emitted token then follows plain sampling's distribution
(speculative sampling; Leviathan et al. 2023, Chen et al. 2023).

Drafts are Jacobi iterates (SJD, Teng et al., ICLR 2025): the ``p`` a pass computed at a position, conditioned
on the drafts before it, is that position's ``q`` in the next pass; positions new to the window start from the
furthest ``p`` the pass computed, and a new image's first window proposes a point mass (any fixed guess is exact).
How a position's next draft follows its last one (``GenerationConfig.speculative_coupling``): "maximal" keeps
the old draft with probability min(1, p / q_old) and else draws from max(0, p - q_old), the most often-equal
coupling (MC-SJD, So et al. 2025; SJD-PAC's adaptive continuation); "gumbel" keeps the position's Exp(1) draws
from pass to pass; "independent" draws afresh (SJD). All are exact because a position's randomness never reaches
anything before it, and the acceptance test at a position uses draws of its own.
Greedy (temperature 0) makes ``p`` one-hot: Jacobi decoding, token for token plain greedy's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.inference import sampling
from fusion.inference.step import (
    Copies,
    Knobs,
    Masks,
    RowState,
    StepOptions,
    advance,
    finite_with_copies,
    guide,
    per_position,
    pick,
)
from fusion.model.cache import KVCache
from fusion.model.transformer import Transformer


@dataclass
class Window:
    """Per-row drafts for the W-1 positions after each row's last token, and their state; updated in place."""

    drafts: torch.Tensor      # long [B, W-1]: the codes the next pass proposes
    q: torch.Tensor           # float [B, W-1, C]: the distribution each draft was drawn from
    noise: torch.Tensor       # float [B, W-1, C]: each position's own Exp(1) draws (Gumbel coupling)
    noise_kept: torch.Tensor  # bool [B, W-1]: the position's draws are its own from an earlier pass
    active: torch.Tensor      # bool [B]: the drafts are under way (the row was inside an image last pass)

    @classmethod
    def allocate(cls, batch: int, window: int, codebook: int, device: torch.device) -> Window:
        shape = (batch, window - 1, codebook)
        return cls(torch.zeros(batch, window - 1, dtype=torch.long, device=device), torch.zeros(shape, device=device),
                   torch.ones(shape, device=device), torch.zeros(batch, window - 1, dtype=torch.bool, device=device),
                   torch.zeros(batch, dtype=torch.bool, device=device))

    def tensors(self) -> list[torch.Tensor]:
        return list(vars(self).values())


def accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
           u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule, per draft: (accepted [..] bool, what to draw from if rejected [.., C]).

    ``p``, ``q`` [.., C]: target and draft distributions; ``draft`` [..] codes drawn from ``q``; ``u`` [..]
    Uniform(0, 1) draws. Accepted with probability min(1, p(d) / q(d)); the residual is max(0, p - q).
    Module-level so that tests can swap in wrong rules and see the distribution test fail.
    """
    pd = p.gather(-1, draft[..., None]).squeeze(-1)
    qd = q.gather(-1, draft[..., None]).squeeze(-1)
    return u * qd < pd, (p - q).clamp_min(0)


def target_probs(x: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Processed logits [B, W, C] -> the distribution plain sampling draws from: softmax(x / T), one-hot at T = 0
    (``temperature`` 0-dim or per row [B])."""
    temperature = temperature.view(-1, 1, 1) if temperature.dim() else temperature
    greedy = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).to(torch.float32)
    return torch.where(temperature > 0, (x / temperature.clamp(min=1e-6)).softmax(-1, dtype=torch.float32), greedy)


def start_windows(window: Window, opts: StepOptions) -> None:
    """Rows whose image has just begun propose code 0 everywhere, as a point mass (q one-hot): any fixed guess
    is exact, and no draws are spent on positions the first pass knows nothing about."""
    fresh = ~window.active
    window.drafts.masked_fill_(fresh[:, None], 0)
    point = torch.nn.functional.one_hot(window.drafts, opts.codebook).to(window.q.dtype)
    window.q.copy_(torch.where(fresh[:, None, None], point, window.q))
    window.noise_kept.logical_and_(~fresh[:, None])


def _window_seen(state: RowState, drafts: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    """[B, W, C] codes in the context of each window position: the row's own, then the drafts before it."""
    seen = state.seen[:, opts.image_start:opts.image_start + opts.codebook]
    before = torch.nn.functional.one_hot(drafts, opts.codebook).cumsum(1) > 0
    return torch.cat([torch.zeros_like(before[:, :1]), before], 1) | seen[:, None]


def targets(logits: torch.Tensor, drafts: torch.Tensor, state: RowState, opts: StepOptions, knobs: Knobs,
            copies: Copies) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, W, V] logits -> (p [B, W, C] over the codes at each window position, whether each position's raw or
    processed logits were broken [B, W]): guided, penalised, top-k / top-p filtered, tempered."""
    B, W, C = drafts.shape[0], opts.window, opts.codebook
    codes = logits[..., opts.image_start:opts.image_start + C]
    x = guide(codes, state.in_image, opts, knobs, copies, None).reshape(B * W, C)
    seen = _window_seen(state, drafts, opts).reshape(B * W, C) if opts.use_penalty else None
    x = sampling.process(x, seen=seen, repetition_penalty=per_position(knobs.repetition_penalty, W),
                         top_k=per_position(knobs.top_k, W) if opts.top_k_cap else 0, top_k_cap=opts.top_k_cap or None,
                         top_p=per_position(knobs.top_p, W) if opts.use_top_p else 1.0).view(B, W, C)
    return target_probs(x, knobs.temperature), ~finite_with_copies(codes, copies) | ~x.amax(-1).isfinite()


def _at(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``t[b, i[b]]`` for t [B, K, C], i [B] -> [B, C]."""
    return t.gather(1, i.view(-1, 1, 1).expand(-1, 1, t.shape[-1])).squeeze(1)


@dataclass
class Verdict:
    """What a pass decided per row: tokens [B, W] (the first ``count`` emitted), and, per draft, whether the rule
    accepted it and its residual (the maximal coupling of the next drafts reuses both)."""

    toks: torch.Tensor
    count: torch.Tensor
    broken: torch.Tensor
    ok: torch.Tensor
    residual: torch.Tensor


def verify(p: torch.Tensor, bad: torch.Tensor, window: Window, state: RowState, opts: StepOptions,
           final_noise: torch.Tensor, uniform: torch.Tensor) -> Verdict:
    """Accept a prefix of the drafts, then draw the pass's last token from the residual of the first rejected
    draft, or from p after the last accepted one. A draft beyond the codes the image still owes or the row's
    budget is never accepted; the token after the image's last code is the forced eoi."""
    W, drafts = opts.window, window.drafts
    ok, residual = accept(p[:, :-1], window.q, drafts, uniform[:, 1:])
    limit = torch.minimum(state.codes_left, state.remaining - 1).clamp(0, W - 1)
    a = (ok & (torch.arange(W - 1, device=p.device) < limit[:, None])).long().cumprod(1).sum(1)
    dist = torch.where((a < limit)[:, None], _at(residual, a.clamp(max=W - 2)), _at(p, a))
    dist = torch.where(dist.sum(-1, keepdim=True) > 0, dist, _at(p, a))  # a rejection by rounding alone
    last = torch.where(state.codes_left == a, opts.eoi_id, opts.image_start + (dist / final_noise).argmax(-1))
    toks = torch.cat([drafts + opts.image_start, torch.full_like(drafts[:, :1], opts.pad_id)], 1)
    toks = toks.scatter(1, a[:, None], last[:, None])
    used = torch.arange(W, device=p.device)[None] <= torch.minimum(a, state.codes_left - 1)[:, None]
    return Verdict(toks, a + 1, (bad & used).any(1), ok, residual)


def next_drafts(window: Window, p: torch.Tensor, verdict: Verdict, fresh: torch.Tensor, opts: StepOptions) -> None:
    """Slide the window past the emitted tokens and draw the next drafts, ``fresh`` [B, W-1, C] Exp(1) noise
    giving each next position its own draws.

    A next position this pass predicted gets q = its p here (Jacobi); the positions beyond start from the furthest
    p the pass computed (a guess as good as any, and a little better than uniform on the demo: benchmarks/RESULTS.md,
    "speculative decoding of images"). How the draft is drawn
    from q (``opts.coupling``): "independent" (SJD), "gumbel" (the position's draws are kept from pass to pass) or
    "maximal" (the position's old draft is kept with probability min(1, p / q_old), else a draw from the residual:
    MC-SJD's maximal coupling)."""
    W = opts.window
    # p[:, i] predicts the position of draft slot i: so src indexes both this pass's p and its drafts
    src = verdict.count[:, None] + torch.arange(W - 1, device=p.device)
    take = lambda t, i: t.gather(1, i[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    q = torch.where((src > W - 1)[..., None], p[:, -1:], take(p, src.clamp(max=W - 1)))
    had = src <= W - 2  # this pass drafted the position too
    if opts.coupling == "gumbel":
        noise = torch.where((had & window.noise_kept.gather(1, src.clamp(max=W - 2)))[..., None],
                            take(window.noise, src.clamp(max=W - 2)), fresh)
        window.noise.copy_(noise)
        window.noise_kept.copy_(torch.ones_like(had))
    else:
        noise = fresh
    drafts = (q / noise).argmax(-1)
    if opts.coupling == "maximal":
        old = verdict.ok.gather(1, src.clamp(max=W - 2))
        residual = take(verdict.residual, src.clamp(max=W - 2))
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, q)  # a rejection by rounding alone
        redraw = (residual / noise).argmax(-1)
        drafts = torch.where(had, torch.where(old, window.drafts.gather(1, src.clamp(max=W - 2)), redraw), drafts)
    window.drafts.copy_(drafts)
    window.q.copy_(q)


def window_step(model: Transformer, cache: KVCache, tok: torch.Tensor, window: Window, state: RowState,
                masks: Masks, opts: StepOptions, knobs: Knobs, copies: Copies, noise: torch.Tensor,
                code_noise: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One pass of W tokens per row: image rows verify their drafts, text rows take one token from the first
    position (plain decoding's choice); copies are fed their source row's tokens. Returns each row's new last
    token [B]; no host sync.

    ``noise`` [B, V]: text rows' Exp(1) draws; ``code_noise`` [B, W, C]: image rows' (row 0 for the pass's last
    token, rows 1.. for the next drafts); ``uniform`` [B, W]: the acceptance tests' draws."""
    W = opts.window
    start_windows(window, opts)
    fed = torch.cat([tok[:, None], window.drafts + opts.image_start], 1)[copies.source]
    logits = model(fed, cache=cache)
    text_tok, text_broken = pick(logits[:, 0], state, masks, opts, knobs, copies, noise)
    p, bad = targets(logits, window.drafts, state, opts, knobs, copies)
    verdict = verify(p, bad, window, state, opts, code_noise[:, 0], uniform)
    inside = state.in_image.clone()  # advance() updates the state in place
    toks = torch.where(inside[:, None], verdict.toks, torch.cat([text_tok[:, None], verdict.toks[:, 1:]], 1))
    count = torch.where(inside, verdict.count, 1)
    next_drafts(window, p, verdict, code_noise[:, 1:], opts)
    cache.seqlens.sub_((W - count)[copies.source])  # the cache keeps the last token and the accepted drafts
    advance(state, toks, count, torch.where(inside, verdict.broken, text_broken), opts)
    window.active.copy_(inside & state.in_image & ~state.done)  # a row that just opened an image starts afresh
    return toks.gather(1, (count - 1)[:, None]).squeeze(1)
