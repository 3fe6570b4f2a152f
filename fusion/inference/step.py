"""One decode pass for a batch of rows, each running its own modality state machine in device tensors.

- text: image ids masked; ``boi`` allowed only when images are enabled and a whole image (boi + N codes + eoi,
  N = the image tokenizer's ``tokens_per_image``) still fits in the row's budget;
- image: only image ids until N codes are out, then ``eoi`` is forced and the row is back in text.

Rows of one batch may sit in different modes at the same pass, and hold their own sampling values (``Knobs``:
one value for the batch, or one per row). Classifier-free guidance runs extra copies of a row in the same batch;
``Copies`` says, per row, which row it is fed from and where its copies are, so a row and its copies may sit in
any rows (a server's slots). Guidance only mixes logits while a row is inside an image; a copy's own samples are
never used (it is marked done). A row whose logits turn NaN / +inf (or all -inf) is flagged (``nonfinite``) and
ended; the session raises at its next host sync. A pass may emit several tokens per row (speculative decoding,
``speculative.py``): ``advance`` takes them all. Nothing here syncs with the host, so ``decode_one`` compiles
(and becomes a CUDA graph) as one piece.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusion.inference import sampling
from fusion.model.cache import KVCache
from fusion.model.transformer import Transformer
from fusion.tokenizers.grammar import image_length, spans_after
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
    groups: int                  # the most copies any row has: 1, 2 (guidance) or 3 (3-way guidance)
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
    """The sampling values as device tensors, 0-dim (the batch's) or [rows] (each row's), so a compiled step does
    not recompile when they change."""

    temperature: torch.Tensor    # 0: greedy
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    guidance_scale: torch.Tensor
    image_guidance_scale: torch.Tensor

    @classmethod
    def of(cls, device, rows: int | None = None, **values: float) -> Knobs:
        """Each value as a 0-dim tensor (the batch's), or with ``rows`` as a [rows] tensor (each row's, to set)."""
        shape = () if rows is None else (rows,)
        return cls(**{k: torch.full(shape, v, dtype=torch.long if k == "top_k" else torch.float32, device=device)
                      for k, v in values.items()})

    def tensors(self) -> list[torch.Tensor]:
        return list(vars(self).values())


def per_position(knob: torch.Tensor, positions: int) -> torch.Tensor:
    """A knob for logits flattened to [rows * positions, V]: a per-row knob repeated for each position."""
    return knob if knob.dim() == 0 else knob.repeat_interleave(positions)


@dataclass(frozen=True)
class Copies:
    """Where each row's guidance copies sit, by explicit index ([rows] long tensors on the device): ``source``, the
    row whose token a row is fed (itself, or for a copy its conditional row); ``uncond`` / ``image_only``, the rows
    holding its unconditional and (3-way guidance) image-only copies (itself where it has none); ``groups``, 1, 2
    or 3 copies in all."""

    source: torch.Tensor
    uncond: torch.Tensor
    image_only: torch.Tensor
    groups: torch.Tensor

    @classmethod
    def group_major(cls, batch: int, groups: int, device) -> Copies:
        """The layout of one call's prompts (``prompts.PromptBatch``): the B rows, then the image-only copies of
        all B (3-way guidance), then the unconditional ones."""
        rows = torch.arange(batch * groups, device=device)
        own = rows < batch
        image_only = torch.where(own & (groups == 3), rows + batch, rows)
        uncond = torch.where(own & (groups > 1), rows + (groups - 1) * batch, rows)
        return cls(rows % batch, uncond, image_only, torch.where(own, groups, 1))

    def tensors(self) -> list[torch.Tensor]:
        return list(vars(self).values())


def allowed_ids(state: RowState, masks: Masks, n_codes: int) -> torch.Tensor:
    """[B, V] bool: what each row may emit now, by its mode and budget."""
    may_start = (state.images_left > 0) & (state.remaining >= image_length(n_codes))
    text_ok = masks.text | (masks.boi & may_start[:, None])
    image_ok = torch.where((state.codes_left > 0)[:, None], masks.image, masks.eoi)
    allowed = torch.where(state.in_image[:, None], image_ok, text_ok)
    return torch.where(state.done[:, None], masks.pad, allowed)


def guide(logits: torch.Tensor, in_image: torch.Tensor, opts: StepOptions, knobs: Knobs, copies: Copies,
          allowed: torch.Tensor | None) -> torch.Tensor:
    """[rows, ..., V] logits of every row -> the same, guided inside images for rows with copies (over each row's
    ``allowed`` ids, None: all); every other row keeps its own logits."""
    if opts.groups == 1:
        return logits
    shape, per_row = logits.shape, logits[0].numel() // logits.shape[-1]
    flat = lambda rows: logits[rows].reshape(-1, shape[-1])  # noqa: E731
    own = logits.reshape(-1, shape[-1])
    scale = per_position(knobs.guidance_scale, per_row)
    mixed = sampling.cfg_mix(own, flat(copies.uncond), scale, opts.guidance_form, allowed)
    if opts.groups == 3:
        three = sampling.cfg_mix3(own, flat(copies.image_only), flat(copies.uncond), scale,
                                  per_position(knobs.image_guidance_scale, per_row), opts.guidance_form, allowed)
        mixed = torch.where(per_position(copies.groups == 3, per_row)[:, None], three, mixed)
    use = (in_image & (copies.groups > 1)).view(-1, *[1] * (len(shape) - 1))
    return torch.where(use, mixed.view(shape), logits)


def finite_with_copies(logits: torch.Tensor, copies: Copies) -> torch.Tensor:
    """[rows, ...] bool: a row's logits and its copies' are all finite (max over the last dim)."""
    ok = logits.amax(-1).isfinite()
    return ok & ok[copies.uncond] & ok[copies.image_only]


def pick(logits: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions, knobs: Knobs, copies: Copies,
         noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Guide, mask, filter and sample one token per row from [rows, V] logits -> (tokens, broken), each [rows].

    ``broken``: a live row whose logits (or its copies') hold NaN / inf, or that has nothing left to sample."""
    allowed = allowed_ids(state, masks, opts.n_codes)
    mixed = sampling.process(guide(logits, state.in_image, opts, knobs, copies, allowed), allowed=allowed,
                             seen=state.seen if opts.use_penalty else None,
                             repetition_penalty=knobs.repetition_penalty,
                             top_k=knobs.top_k if opts.top_k_cap else 0, top_k_cap=opts.top_k_cap or None,
                             top_p=knobs.top_p if opts.use_top_p else 1.0)
    # A row maximum is NaN if any logit is, +inf if one overflowed, -inf if none is left: one cheap reduction
    # of the model's logits (every copy) and one of what is left to sample from. A single -inf logit is fine
    # (a hook or processor may ban tokens that way); a row with nothing left would silently emit id 0.
    broken = (~finite_with_copies(logits, copies) | ~mixed.amax(-1).isfinite()) & ~state.done
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
    in_image, codes_left = spans_after(state.in_image, state.codes_left, count, is_boi, is_eoi, opts.n_codes)
    state.codes_left.copy_(codes_left)
    state.in_image.copy_(in_image)
    state.images_left.sub_(is_eoi.long())
    state.remaining.sub_(count)
    state.done.copy_(state.done | (last == opts.eos_id) | (is_eoi & (state.images_left == 0))
                     | (live & (state.remaining <= 0)) | broken)


def choose(logits: torch.Tensor, state: RowState, masks: Masks, opts: StepOptions, knobs: Knobs, copies: Copies,
           noise: torch.Tensor) -> torch.Tensor:
    """One token per row from [rows, V] logits (pad for finished rows and copies); advance the state in place."""
    tok, broken = pick(logits, state, masks, opts, knobs, copies, noise)
    advance(state, tok[:, None], torch.ones_like(state.n_out), broken, opts)
    return tok


def decode_one(model: Transformer, cache: KVCache, tok: torch.Tensor, state: RowState, masks: Masks,
               opts: StepOptions, knobs: Knobs, copies: Copies, noise: torch.Tensor) -> torch.Tensor:
    """Feed each row its source row's last token (``tok`` [rows]), return the next [rows]. The part worth
    compiling."""
    logits = model.next_logits(tok[copies.source][:, None], cache)
    return choose(logits, state, masks, opts, knobs, copies, noise)


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
