"""Logits processors and the token sampler: batched, on-device, no host sync.

Every knob takes a Python number (one value for the batch) or a tensor [B] (one value per row).

Guidance mixes the conditional and unconditional copies: ``uncond + scale * (cond - uncond)``, scale 1 being the
conditional model itself, either on logits (Chameleon's ``InBatchCFGLogitsProcessor``, LlamaGen, HF) or on
probabilities, clamped at 0. On logits it multiplies each token's odds by ``(p_cond / p_uncond) ** (scale - 1)``,
which rewards tokens for being unlikely WITHOUT the condition: among a VQ codebook's near-duplicate codes it
picks atypical ones, and images come apart; probabilities keep the conditional model's first choice, hence the
default (figures: benchmarks/RESULTS.md, "Figures moved out of code comments"). On logits, modality masks are
applied after guidance (``-inf - -inf`` is NaN). On probabilities, each copy is first renormalised over the ids
the row may emit (``allowed``): the guided mass over them then sums to 1, so at least one stays above the clamp,
and a forced token (``eoi`` after an image's last code) keeps probability 1.
Renormalised over the whole vocabulary instead, a forced token the unconditional copy likes better than the
conditional one can be clamped to 0 at a high scale, leaving nothing to sample: the row would end its image with
``pad``.
"""

from __future__ import annotations

import torch

Knob = float | int | torch.Tensor


def _per_row(x: Knob, logits: torch.Tensor) -> torch.Tensor:
    """A knob as a [B, 1] tensor on the logits' device."""
    t = torch.as_tensor(x, device=logits.device)
    return t.reshape(-1, 1) if t.dim() else t.expand(logits.shape[0]).reshape(-1, 1)


def _guide(parts: list[torch.Tensor], terms: list[tuple[int, int, Knob]], form: str,
           allowed: torch.Tensor | None) -> torch.Tensor:
    """``parts[0] + sum(scale * (parts[a] - parts[b]))`` on logits, or on probabilities (over ``allowed`` ids)
    then back to log space."""
    if form == "logits":
        x = parts
    else:
        dtype = torch.promote_types(parts[0].dtype, torch.float32)
        x = [(p if allowed is None else mask_logits(p, allowed)).softmax(-1, dtype=dtype) for p in parts]
    out = x[0]
    for a, b, scale in terms:
        out = out + _per_row(scale, parts[0]) * (x[a] - x[b])
    return out if form == "logits" else out.clamp_min(0).log().to(parts[0].dtype)


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: Knob, form: str = "probs",
            allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` on ``form`` ("probs" or "logits");
    ``allowed`` ([V] or [B, V] bool) restricts the probabilities to the ids a row may emit."""
    return _guide([uncond, cond], [(1, 0, scale)], form, allowed)


def cfg_mix3(full: torch.Tensor, image_only: torch.Tensor, uncond: torch.Tensor, text_scale: Knob,
             image_scale: Knob, form: str = "probs", allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Chameleon's 3-way (InstructPix2Pix) guidance: the prompt's images and its text are guided separately.

    ``uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)`` on ``form``.
    """
    return _guide([uncond, image_only, full], [(1, 0, image_scale), (2, 1, text_scale)], form, allowed)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Knob) -> torch.Tensor:
    """CTRL / HF rule on ids in ``seen`` [B, V] bool: positive logits divided by ``penalty``, negative multiplied."""
    p = _per_row(penalty, logits).to(logits.dtype)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: Knob, cap: int | None = None) -> torch.Tensor:
    """Keep each row's ``k`` largest logits (ties at the k-th value kept); k <= 0 keeps all.

    A tensor ``k`` with ``cap`` (k <= cap) finds the k-th value among the ``cap`` largest instead of a full sort.
    """
    V = logits.shape[-1]
    if isinstance(k, int):  # one k for the batch: topk is cheaper than a full sort
        return logits if k <= 0 else logits.masked_fill(logits < logits.topk(min(k, V), -1).values[:, -1:],
                                                         float("-inf"))
    k = _per_row(k, logits).long()
    top = logits.topk(min(cap, V), -1).values if cap else logits.sort(dim=-1, descending=True).values
    kth = top.gather(-1, (k.clamp(1, top.shape[-1]) - 1))
    keep = (logits >= kth) | (k <= 0)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: Knob) -> torch.Tensor:
    """Nucleus: keep the smallest prefix of tokens (by probability) whose mass reaches ``p``; p >= 1 keeps all."""
    p = _per_row(p, logits).to(logits.dtype)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # exclusive: the top token is always kept
    keep_sorted = (mass_before < p) | (p >= 1)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-inf wherever ``allowed`` ([V] or [B, V] bool) is False."""
    return logits.masked_fill(~allowed, float("-inf"))


def sample(logits: torch.Tensor, temperature: Knob, noise: torch.Tensor) -> torch.Tensor:
    """Next ids [B]: argmax where temperature is 0, else a draw from softmax(logits / temperature).

    ``noise`` [B, V] holds Exp(1) draws (``torch.empty(...).exponential_(generator=g)``): argmax(p / noise)
    is an exact sample of p without ``torch.multinomial``'s host sync, and keeping the randomness an
    input makes a compiled step reproduce eager results for the same seed.
    """
    t = _per_row(temperature, logits).to(logits.dtype)
    greedy = logits.argmax(-1)
    probs = (logits / t.clamp(min=1e-6)).softmax(-1)
    drawn = (probs / noise).argmax(-1)
    return torch.where(t.squeeze(-1) > 0, drawn, greedy)


def process(logits: torch.Tensor, *, allowed: torch.Tensor | None = None, seen: torch.Tensor | None = None,
            repetition_penalty: Knob = 1.0, top_k: Knob = 0, top_p: Knob = 1.0,
            top_k_cap: int | None = None) -> torch.Tensor:
    """The usual chain: repetition penalty, modality mask, top-k, top-p (each skipped when off)."""
    if seen is not None and not (isinstance(repetition_penalty, (int, float)) and repetition_penalty == 1.0):
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if allowed is not None:
        logits = mask_logits(logits, allowed)
    if not (isinstance(top_k, int) and top_k <= 0):
        logits = top_k_filter(logits, top_k, top_k_cap)
    if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        logits = top_p_filter(logits, top_p)
    return logits
