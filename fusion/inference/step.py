"""One decode step for a batch of rows, each running its own modality state machine in device tensors.

- text: image ids masked; ``boi`` allowed only when images are enabled and a whole image (boi + N codes + eoi,
  N = the image tokenizer's ``tokens_per_image``) still fits in the row's budget;
- image: only image ids until N codes are out, then ``eoi`` is forced and the row is back in text.

Rows of one batch may sit in different modes at the same step. Classifier-free guidance runs extra copies of
every row (``groups``) in the same batch; guidance only mixes logits while a row is inside an image. A row
whose logits turn NaN / +inf (or all -inf) is flagged (``nonfinite``) and ended; the session raises at its next
host sync. Nothing here syncs with the host, so ``decode_one`` compiles (and becomes a CUDA graph) as one piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.inference import sampling
from fusion.model.cache import KVCache
from fusion.vocab import Vocab


@dataclass
class RowState:
    """Per-row decode state [B] on the device; updated in place so compiled steps see fixed addresses."""

    in_image: torch.Tensor     # bool: inside an image span
    codes_left: torch.Tensor   # long: image codes still owed by the open image (0: eoi is next)
    images_left: torch.Tensor  # long: images this row may still start (and finishing the last one ends it)
    remaining: torch.Tensor    # long: new tokens left in the budget
    done: torch.Tensor         # bool: finished rows emit pad
    n_out: torch.Tensor        # long: tokens emitted before finishing
    nonfinite: torch.Tensor    # bool: the row's logits held NaN / inf while it was live (an error at the next sync)
    seen: torch.Tensor | None  # bool [B, V]: ids in the context, for the repetition penalty

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in vars(self).values() if t is not None]


@dataclass(frozen=True)
class Masks:
    """Constant [V] bool masks of the vocabulary, built once per call."""

    text: torch.Tensor
    image: torch.Tensor
    boi: torch.Tensor
    eoi: torch.Tensor
    pad: torch.Tensor

    @classmethod
    def build(cls, vocab: Vocab, device) -> Masks:
        def one(i: int) -> torch.Tensor:
            m = torch.zeros(vocab.size, dtype=torch.bool, device=device)
            m[i] = True
            return m

        return cls(vocab.text_mask(device), vocab.image_mask(device), one(vocab.boi_id), one(vocab.eoi_id),
                   one(vocab.pad_id))


@dataclass(frozen=True)
class StepOptions:
    """What shapes a step's code (hashable: a compiled step specialises on it); the values are ``Knobs``."""

    n_codes: int                 # tokens_per_image
    groups: int                  # 1, 2 (guidance) or 3 (3-way guidance) copies of each row
    boi_id: int
    eoi_id: int
    eos_id: int
    guidance_form: str = "probs"
    top_k_cap: int = 0           # top-k on, for any k up to this (0: off)
    use_top_p: bool = False
    use_penalty: bool = False


@dataclass(frozen=True)
class Knobs:
    """The sampling values as 0-dim device tensors, so a compiled step does not recompile when they change."""

    temperature: torch.Tensor    # 0: greedy
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    guidance_scale: torch.Tensor
    image_guidance_scale: torch.Tensor

    @classmethod
    def of(cls, device, **values: float) -> Knobs:
        return cls(**{k: torch.tensor(v, dtype=torch.long if k == "top_k" else torch.float32, device=device)
                      for k, v in values.items()})

    def tensors(self) -> list[torch.Tensor]:
        return list(vars(self).values())


def allowed_ids(state: RowState, masks: Masks, n_codes: int) -> torch.Tensor:
    """[B, V] bool: what each row may emit now, by its mode and budget."""
    may_start = (state.images_left > 0) & (state.remaining >= n_codes + 2)
    text_ok = masks.text | (masks.boi & may_start[:, None])
    image_ok = torch.where((state.codes_left > 0)[:, None], masks.image, masks.eoi)
    allowed = torch.where(state.in_image[:, None], image_ok, text_ok)
    return torch.where(state.done[:, None], masks.pad, allowed)


def guide(logits: torch.Tensor, state: RowState, opts: StepOptions, knobs: Knobs,
          allowed: torch.Tensor) -> torch.Tensor:
    """[G*B, V] logits of every copy -> [B, V]: guided inside images (over each row's ``allowed`` ids), the
    conditional row elsewhere."""
    g = logits.view(opts.groups, -1, logits.shape[-1])
    if opts.groups == 1:
        return g[0]
    guided = (sampling.cfg_mix(g[0], g[1], knobs.guidance_scale, opts.guidance_form, allowed) if opts.groups == 2
              else sampling.cfg_mix3(g[0], g[1], g[2], knobs.guidance_scale, knobs.image_guidance_scale,
                                     opts.guidance_form, allowed))
    return torch.where(state.in_image[:, None], guided, g[0])


def choose(logits: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions, knobs: Knobs,
           noise: torch.Tensor) -> torch.Tensor:
    """Guide, mask, filter and sample one token per row from [G*B, V] logits; advance the state in place."""
    live = ~state.done
    allowed = allowed_ids(state, masks, opts.n_codes)
    mixed = sampling.process(guide(logits, state, opts, knobs, allowed), allowed=allowed,
                             seen=state.seen if opts.use_penalty else None,
                             repetition_penalty=knobs.repetition_penalty,
                             top_k=knobs.top_k if opts.top_k_cap else 0, top_k_cap=opts.top_k_cap or None,
                             top_p=knobs.top_p if opts.use_top_p else 1.0)
    # A row maximum is NaN if any logit is, +inf if one overflowed, -inf if none is left: one cheap reduction
    # of the model's logits (every copy) and one of what is left to sample from. A single -inf logit is fine
    # (a hook or processor may ban tokens that way); a row with nothing left would silently emit id 0.
    broken = (~logits.amax(-1).isfinite().view(opts.groups, -1).all(0) | ~mixed.amax(-1).isfinite()) & live
    state.nonfinite.logical_or_(broken)
    tok = sampling.sample(mixed, knobs.temperature, noise)

    is_boi, is_eoi = tok == opts.boi_id, tok == opts.eoi_id
    state.n_out.add_(live.long())
    state.codes_left.copy_(torch.where(is_boi, opts.n_codes, state.codes_left - (state.in_image & ~is_eoi).long()))
    state.in_image.copy_((state.in_image & ~is_eoi) | is_boi)
    state.images_left.sub_(is_eoi.long())
    state.remaining.sub_(1)
    state.done.copy_(state.done | (tok == opts.eos_id) | (is_eoi & (state.images_left == 0))
                     | (state.remaining <= 0) | broken)
    if state.seen is not None:
        state.seen.scatter_(1, tok[:, None], True)
    return tok


def decode_one(model, cache: KVCache, tok: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions,
               knobs: Knobs, noise: torch.Tensor) -> torch.Tensor:
    """Feed each row's last token [B] (to all G copies), return the next [B]. The part worth compiling."""
    return choose(model.next_logits(tok.repeat(opts.groups)[:, None], cache), state, masks, opts, knobs, noise)


COMPILE_BACKEND = "inductor"  # tests swap in "eager": the graph (and its breaks / recompiles) is Dynamo's either way
_compiled: dict[tuple[str, str], object] = {}


def compiled_decode_one(device_type: str):
    """``decode_one`` compiled as ONE graph (``fullgraph``) per process and device type: CUDA graphs on a GPU
    (mode "reduce-overhead"), Inductor's C++ on a CPU. Knob values are tensors, so changing them reuses it."""
    key = (device_type, COMPILE_BACKEND)
    if key not in _compiled:
        mode = "reduce-overhead" if device_type == "cuda" and COMPILE_BACKEND == "inductor" else None
        _compiled[key] = torch.compile(decode_one, backend=COMPILE_BACKEND, mode=mode, fullgraph=True, dynamic=False)
    return _compiled[key]
