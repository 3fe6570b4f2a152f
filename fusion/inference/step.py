"""One decode pass for a batch of rows, each running its own modality state machine in device tensors.

- text: image ids masked; ``boi`` allowed only when images are enabled and a whole image (boi + N codes + eoi,
  N = the image tokenizer's ``tokens_per_image``) still fits in the row's budget;
- image: only image ids until N codes are out, then ``eoi`` is forced and the row is back in text.

Rows of one batch may sit in different modes at the same pass. Classifier-free guidance runs extra copies of
every row (``groups``) in the same batch; guidance only mixes logits while a row is inside an image. A row
whose logits turn NaN / +inf (or all -inf) is flagged (``nonfinite``) and ended; the session raises at its next
host sync. A pass may emit several tokens per row (speculative decoding, ``speculative.py``): ``advance`` takes
them all. Nothing here syncs with the host, so ``decode_one`` compiles (and becomes a CUDA graph) as one piece.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusion.inference import sampling
from fusion.model.cache import KVCache
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab


@dataclass
class RowState:
    """Per-row decode state [B] on the device; updated in place so compiled steps see fixed addresses."""

    in_image: torch.Tensor     # bool: inside an image span
    codes_left: torch.Tensor   # long: image codes still owed by the open image (0: eoi is next)
    images_left: torch.Tensor  # long: images this row may still start (and finishing the last one ends it)
    remaining: torch.Tensor    # long: new tokens left in the budget
    done: torch.Tensor         # bool: finished rows emit nothing more
    n_out: torch.Tensor        # long: tokens emitted so far
    out: torch.Tensor          # long [B, budget + slack]: the emitted tokens, row b's first n_out[b] valid
    image_passes: torch.Tensor  # long: passes the row began inside an image (decoder calls from boi to eoi)
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
    pad_id: int
    image_start: int             # the image codes are ids image_start .. image_start + codebook - 1
    codebook: int
    guidance_form: str = "probs"
    top_k_cap: int = 0           # top-k on, for any k up to this (0: off)
    use_top_p: bool = False
    use_penalty: bool = False
    window: int = 1              # tokens a speculative pass feeds per row (1: plain decoding)
    coupling: str = "maximal"    # how speculative drafts follow from pass to pass (speculative.next_drafts)


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


def guide(logits: torch.Tensor, in_image: torch.Tensor, opts: StepOptions, knobs: Knobs,
          allowed: torch.Tensor | None) -> torch.Tensor:
    """[G*B, ..., V] logits of every copy -> [B, ..., V]: guided inside images (over each row's ``allowed`` ids,
    None: all), the conditional row elsewhere."""
    g = logits.view(opts.groups, -1, *logits.shape[1:])
    if opts.groups == 1:
        return g[0]
    flat = [x.reshape(-1, x.shape[-1]) for x in g]
    guided = (sampling.cfg_mix(flat[0], flat[1], knobs.guidance_scale, opts.guidance_form, allowed)
              if opts.groups == 2 else
              sampling.cfg_mix3(flat[0], flat[1], flat[2], knobs.guidance_scale, knobs.image_guidance_scale,
                                opts.guidance_form, allowed))
    inside = in_image.view(-1, *[1] * (g.dim() - 2))
    return torch.where(inside, guided.view_as(g[0]), g[0])


def pick(logits: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions, knobs: Knobs,
         noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Guide, mask, filter and sample one token per row from [G*B, V] logits -> (tokens [B], broken [B]).

    ``broken``: a live row whose logits hold NaN / inf, or that has nothing left to sample."""
    allowed = allowed_ids(state, masks, opts.n_codes)
    mixed = sampling.process(guide(logits, state.in_image, opts, knobs, allowed), allowed=allowed,
                             seen=state.seen if opts.use_penalty else None,
                             repetition_penalty=knobs.repetition_penalty,
                             top_k=knobs.top_k if opts.top_k_cap else 0, top_k_cap=opts.top_k_cap or None,
                             top_p=knobs.top_p if opts.use_top_p else 1.0)
    # A row maximum is NaN if any logit is, +inf if one overflowed, -inf if none is left: one cheap reduction
    # of the model's logits (every copy) and one of what is left to sample from. A single -inf logit is fine
    # (a hook or processor may ban tokens that way); a row with nothing left would silently emit id 0.
    broken = (~logits.amax(-1).isfinite().view(opts.groups, -1).all(0) | ~mixed.amax(-1).isfinite()) & ~state.done
    return sampling.sample(mixed, knobs.temperature, noise), broken


def advance(state: RowState, toks: torch.Tensor, count: torch.Tensor, broken: torch.Tensor,
            opts: StepOptions) -> None:
    """Take the first ``count[b]`` of ``toks`` [B, K] as row b's new tokens (0 for finished rows): write them to
    ``out`` and move the state machine past them. Only the last of them may be boi, eoi or eos."""
    live = ~state.done
    count = count * live
    K = toks.shape[1]
    last = toks.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)
    last = torch.where(count > 0, last, -1)
    is_boi, is_eoi = last == opts.boi_id, last == opts.eoi_id
    cols = torch.arange(K, device=toks.device)
    fresh = cols < count[:, None]
    scratch = state.out.shape[1] - 1
    state.out.scatter_(1, torch.where(fresh, state.n_out[:, None] + cols, scratch), toks)
    if state.seen is not None:
        state.seen.scatter_(1, torch.where(fresh, toks, opts.pad_id), True)
    state.nonfinite.logical_or_(broken & live)
    state.image_passes.add_((state.in_image & live).long())
    state.n_out.add_(count)
    codes = torch.where(state.in_image, count - is_eoi.long(), 0)
    state.codes_left.copy_(torch.where(is_boi, opts.n_codes, state.codes_left - codes))
    state.in_image.copy_((state.in_image & ~is_eoi) | is_boi)
    state.images_left.sub_(is_eoi.long())
    state.remaining.sub_(count)
    state.done.copy_(state.done | (last == opts.eos_id) | (is_eoi & (state.images_left == 0))
                     | (live & (state.remaining <= 0)) | broken)


def choose(logits: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions, knobs: Knobs,
           noise: torch.Tensor) -> torch.Tensor:
    """One token per row [B] from [G*B, V] logits (pad for finished rows); advance the state in place."""
    tok, broken = pick(logits, state, masks, opts, knobs, noise)
    advance(state, tok[:, None], torch.ones_like(state.n_out), broken, opts)
    return tok


def decode_one(model: Transformer, cache: KVCache, tok: torch.Tensor, state: RowState, masks: Masks,
               opts: StepOptions, knobs: Knobs, noise: torch.Tensor) -> torch.Tensor:
    """Feed each row's last token [B] (to all G copies), return the next [B]. The part worth compiling."""
    return choose(model.next_logits(tok.repeat(opts.groups)[:, None], cache), state, masks, opts, knobs, noise)


COMPILE_BACKEND = "inductor"  # tests swap in "eager": the graph (and its breaks / recompiles) is Dynamo's either way
# Each batch size x cache bucket x option set compiles once; Dynamo's default limit (8 per function) would make the
# ninth a hard error under fullgraph.
RECOMPILE_LIMIT = 64
_compiled: dict[tuple[str, str, object], Callable] = {}


def compiled(fn: Callable, device_type: str) -> Callable:
    """``fn`` (``decode_one`` or the speculative ``window_step``) compiled as ONE graph (``fullgraph``) per process
    and device type, with static shapes: CUDA graphs on a GPU (mode "reduce-overhead"), Inductor's C++ on a CPU.
    Knob values are tensors, so changing them reuses it."""
    key = (fn.__name__, device_type, COMPILE_BACKEND)
    if key not in _compiled:
        mode = "reduce-overhead" if device_type == "cuda" and COMPILE_BACKEND == "inductor" else None
        graph = torch.compile(fn, backend=COMPILE_BACKEND, mode=mode, fullgraph=True, dynamic=False)

        def run(*args):
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return graph(*args)

        _compiled[key] = run
    return _compiled[key]
