"""Mixed-modal generation: ragged prefill, then one token a step over a static KV cache.

Each row runs its own modality state machine, held in device tensors so a step needs no host sync:

- text mode: image ids masked; ``boi`` allowed only when images are enabled and a whole image
  (boi + N codes + eoi, N = the image tokenizer's ``tokens_per_image``) still fits in the row's budget;
- image mode: only image ids until N codes are out, then ``eoi`` is forced and the row is back in text.

Rows of one batch may sit in different modes at the same step. Modes of a call: ``text`` (no images),
``image`` (boi forced at once, one image, then stop) and ``mixed``. Classifier-free guidance runs the
unconditional prompts (and, for 3-way guidance, image-only prompts) as extra rows of the same batch; every
copy of a row is fed the same sampled token, and guidance only mixes logits while the row is in an image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image as PILImage

from fusion.document import Document
from fusion.inference import sampling
from fusion.inference.cache import KVCache
from fusion.inference.stopping import StopStrings, stop_end, text_id_mask
from fusion.vocab import Vocab

MODES = ("text", "image", "mixed")
StopFn = Callable[[torch.Tensor], "int | None"]


@dataclass
class RowState:
    """Per-row decode state [B] on the device; updated in place so compiled steps see fixed addresses."""

    in_image: torch.Tensor     # bool: inside an image span
    codes_left: torch.Tensor   # long: image codes still owed by the open image (0: eoi is next)
    images_left: torch.Tensor  # long: images this row may still start (and finishing the last one ends it)
    remaining: torch.Tensor    # long: new tokens left in the budget
    done: torch.Tensor         # bool: finished rows emit pad
    n_out: torch.Tensor        # long: tokens emitted before finishing
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
class Options:
    """Everything a step needs besides tensors (hashable, so a compiled step specialises on it)."""

    n_codes: int                 # tokens_per_image
    groups: int                  # 1, 2 (cfg) or 3 (3-way cfg) copies of each row
    boi_id: int
    eoi_id: int
    eos_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    cfg_scale: float = 1.0
    cfg_image_scale: float = 1.0


# ------------------------------------------------------------------ the step


def allowed_ids(state: RowState, masks: Masks, n_codes: int) -> torch.Tensor:
    """[B, V] bool: what each row may emit now, by its mode and budget."""
    may_start = (state.images_left > 0) & (state.remaining >= n_codes + 2)
    text_ok = masks.text | (masks.boi & may_start[:, None])
    image_ok = torch.where((state.codes_left > 0)[:, None], masks.image, masks.eoi)
    allowed = torch.where(state.in_image[:, None], image_ok, text_ok)
    return torch.where(state.done[:, None], masks.pad, allowed)


def choose(logits: torch.Tensor, state: RowState, masks: Masks, opts: Options, noise: torch.Tensor) -> torch.Tensor:
    """Guide, mask, filter and sample one token per row from [G*B, V] logits; advance the state in place."""
    g = logits.view(opts.groups, -1, logits.shape[-1])
    if opts.groups == 1:
        mixed = g[0]
    else:
        guided = (sampling.cfg_mix(g[0], g[1], opts.cfg_scale) if opts.groups == 2
                  else sampling.cfg_mix3(g[0], g[1], g[2], opts.cfg_scale, opts.cfg_image_scale))
        mixed = torch.where(state.in_image[:, None], guided, g[0])
    mixed = sampling.process(mixed, allowed=allowed_ids(state, masks, opts.n_codes), seen=state.seen,
                             repetition_penalty=opts.repetition_penalty, top_k=opts.top_k, top_p=opts.top_p)
    tok = sampling.sample(mixed, opts.temperature, noise)

    is_boi, is_eoi = tok == opts.boi_id, tok == opts.eoi_id
    live = ~state.done
    state.n_out.add_(live.long())
    state.codes_left.copy_(torch.where(is_boi, opts.n_codes, state.codes_left - (state.in_image & ~is_eoi).long()))
    state.in_image.copy_((state.in_image & ~is_eoi) | is_boi)
    state.images_left.sub_(is_eoi.long())
    state.remaining.sub_(1)
    state.done.copy_(state.done | (tok == opts.eos_id) | (is_eoi & (state.images_left == 0))
                     | (state.remaining <= 0))
    if state.seen is not None:
        state.seen.scatter_(1, tok[:, None], True)
    return tok


def decode_one(model, cache: KVCache, tok: torch.Tensor, state: RowState, masks: Masks, opts: Options,
               noise: torch.Tensor) -> torch.Tensor:
    """Feed each row's last token [B] (to all G copies), return the next [B]. The part worth compiling."""
    ids = tok.repeat(opts.groups)[:, None]
    logits = model.lm_head(model.hidden(ids, cache=cache)[:, -1]).float()
    return choose(logits, state, masks, opts, noise)


_compiled_decode_one = None


def _compiled():
    global _compiled_decode_one
    if _compiled_decode_one is None:
        _compiled_decode_one = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True)
    return _compiled_decode_one


# ------------------------------------------------------------------ prompts


def open_image_codes(prompt: torch.Tensor, vocab: Vocab, n_codes: int) -> int | None:
    """Codes already written in an image the prompt leaves open (boi without eoi), or None."""
    bois = (prompt == vocab.boi_id).nonzero()
    if not len(bois):
        return None
    last_boi = int(bois[-1])
    eois = (prompt == vocab.eoi_id).nonzero()
    if len(eois) and int(eois[-1]) > last_boi:
        return None
    tail = prompt[last_boi + 1:]
    if len(tail) > n_codes or not bool(vocab.image_id_mask(tail).all()):
        raise ValueError(f"the prompt ends in a malformed image span: boi followed by {len(tail)} ids, expected "
                         f"at most {n_codes} image codes")
    return len(tail)


def guidance_prompt(prompt: torch.Tensor, vocab: Vocab, keep_images: bool, n_open: int | None) -> torch.Tensor:
    """The prompt with its conditioning dropped: bos, [its complete images,] and any image it leaves open."""
    parts = [prompt[:1]] if len(prompt) and int(prompt[0]) == vocab.bos_id else []
    if keep_images:
        for start in (prompt == vocab.boi_id).nonzero().flatten().tolist():
            end = start + 1
            while end < len(prompt) and vocab.is_image_id(int(prompt[end])):
                end += 1
            if end < len(prompt) and int(prompt[end]) == vocab.eoi_id:
                parts.append(prompt[start:end + 1])
    if n_open is not None:
        parts.append(prompt[len(prompt) - n_open - 1:])
    return torch.cat(parts) if parts else prompt.new_empty(0)


# ------------------------------------------------------------------ a run


class Run:
    """One batched generation: validated prompts, cache, state, and ``step()`` yielding a token per row."""

    def __init__(self, model, prompts: Sequence[torch.Tensor], *, max_new_tokens: int, tokens_per_image: int,
                 mode: str = "mixed", cfg_scale: float = 1.0, cfg_image_scale: float | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int = 0, compile: bool = False) -> None:
        vocab: Vocab = model.cfg.vocab
        N = tokens_per_image
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"tokens_per_image must be a positive int, got {N!r}")
        sampling.check_knobs(temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, cfg_scale=cfg_scale)
        if cfg_image_scale is not None and cfg_image_scale < 0:
            raise ValueError(f"cfg_image_scale must be >= 0, got {cfg_image_scale}")
        if not prompts:
            raise ValueError("no prompts given")
        device = next(model.parameters()).device
        rows, self.prefix, n_open = [], [], []
        for i, p in enumerate(prompts):
            if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.dtype not in (torch.long, torch.int):
                raise TypeError(f"prompt {i} must be a 1-D integer tensor")
            if not len(p):
                raise ValueError(f"prompt {i} is empty")
            p = p.long().cpu()
            if int(p.min()) < 0 or int(p.max()) >= vocab.size:
                raise ValueError(f"prompt {i} has ids outside the vocabulary [0, {vocab.size})")
            k = open_image_codes(p, vocab, N)
            prefix = []
            if mode == "text" and k is not None:
                raise ValueError(f"prompt {i} ends inside an image; mode='text' cannot finish it (use 'mixed')")
            if mode == "image" and k is None:  # boi forced at once: appended to the prompt, and heads the output
                prefix, k = [vocab.boi_id], 0
                p = torch.cat([p, torch.tensor(prefix)])
            if k is not None and max_new_tokens < N - k + 1:
                raise ValueError(f"max_new_tokens={max_new_tokens} cannot finish the image of prompt {i}: "
                                 f"{N - k} more codes + eoi are needed")
            if len(p) + max_new_tokens > model.cfg.max_seq_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that "
                                 f"exceeds the model's context of {model.cfg.max_seq_len}")
            rows.append(p)
            self.prefix.append(prefix)
            n_open.append(k)

        guided = mode != "text" and (cfg_scale != 1.0 or (cfg_image_scale is not None and cfg_image_scale != 1.0))
        groups = (3 if cfg_image_scale is not None else 2) if guided else 1
        B = len(rows)
        all_rows = list(rows)
        if groups == 3:
            all_rows += [guidance_prompt(p, vocab, True, k) for p, k in zip(rows, n_open, strict=True)]
        if groups > 1:
            all_rows += [guidance_prompt(p, vocab, False, k) for p, k in zip(rows, n_open, strict=True)]

        self.model, self.B, self.vocab = model, B, vocab
        self.opts = Options(n_codes=N, groups=groups, boi_id=vocab.boi_id, eoi_id=vocab.eoi_id,
                            eos_id=vocab.eos_id, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                            repetition_penalty=float(repetition_penalty), cfg_scale=float(cfg_scale),
                            cfg_image_scale=float(1.0 if cfg_image_scale is None else cfg_image_scale))
        self.masks = Masks.build(vocab, device)
        lengths = torch.tensor([len(p) for p in all_rows])
        T = int(lengths.max())
        self.cache = KVCache.allocate(model.cfg, len(all_rows), T + max_new_tokens, device,
                                      next(model.parameters()).dtype)
        self._prompt_ids = torch.full((len(all_rows), T), vocab.pad_id, dtype=torch.long)
        for b, p in enumerate(all_rows):
            self._prompt_ids[b, :len(p)] = p
        self._lengths = lengths.to(device)

        opened = torch.tensor([k is not None for k in n_open])
        seen = None
        if repetition_penalty != 1.0:
            seen = torch.zeros(B, vocab.size, dtype=torch.bool)
            for b, p in enumerate(rows):
                seen[b, p] = True
        images = {"text": 0, "image": 1, "mixed": max_new_tokens}[mode]
        self.state = RowState(
            in_image=opened.to(device), codes_left=torch.tensor([N - (k or 0) for k in n_open], device=device),
            images_left=torch.full((B,), images, dtype=torch.long, device=device),
            remaining=torch.full((B,), max_new_tokens, dtype=torch.long, device=device),
            done=torch.zeros(B, dtype=torch.bool, device=device), n_out=torch.zeros(B, dtype=torch.long, device=device),
            seen=None if seen is None else seen.to(device))
        self.max_new_tokens = max_new_tokens
        self.steps = 0
        self._gen = torch.Generator(device).manual_seed(seed)
        self._noise = torch.ones(B, vocab.size, device=device)
        self._tok: torch.Tensor | None = None
        self._step_fn = decode_one
        if compile and device.type == "cuda":
            for t in self.cache.k + self.cache.v + [self.cache.seqlens] + self.state.tensors():
                torch._dynamo.mark_static_address(t)
            self._step_fn = _compiled()

    def _fill_noise(self) -> torch.Tensor:
        if self.opts.temperature > 0:
            self._noise.exponential_(generator=self._gen)
        return self._noise

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """The next token of every row [B] (pad for finished rows), on the device; no host sync."""
        if self.steps >= self.max_new_tokens:
            raise RuntimeError("the token budget is spent")
        noise = self._fill_noise()
        if self._tok is None:
            ids = self._prompt_ids.to(self._lengths.device)
            h = self.model.hidden(ids, cache=self.cache, lengths=self._lengths)
            last = h[torch.arange(len(ids), device=h.device), self._lengths - 1]
            tok = choose(self.model.lm_head(last).float(), self.state, self.masks, self.opts, noise)
        else:
            tok = self._step_fn(self.model, self.cache, self._tok, self.state, self.masks, self.opts, noise)
        self._tok = tok.clone()  # a CUDA-graph output is overwritten by the next replay
        self.steps += 1
        return self._tok

    def all_done(self) -> bool:
        """Host sync: have all rows finished?"""
        return self.steps >= self.max_new_tokens or bool(self.state.done.all())

    def finish(self, rows: Sequence[int]) -> None:
        """Mark rows finished (e.g. a stop string matched on the host)."""
        self.state.done[torch.tensor(list(rows), dtype=torch.long, device=self.state.done.device)] = True


def generate_ids(model, prompts: Sequence[torch.Tensor], *, max_new_tokens: int, tokens_per_image: int,
                 mode: str = "mixed", stop: StopFn | None = None, sync_every: int = 8, **options) -> list[torch.Tensor]:
    """New ids per prompt (CPU LongTensors), ending with eos / the final eoi / the budget / a stop match.

    In mode "image" the output starts with the forced boi. ``stop(ids) -> keep`` is called on a row's output
    so far every ``sync_every`` steps and at the end; returning a length cuts the row there and ends it.
    ``options``: cfg_scale, cfg_image_scale, temperature, top_k, top_p, repetition_penalty, seed, compile.
    """
    run = Run(model, prompts, max_new_tokens=max_new_tokens, tokens_per_image=tokens_per_image, mode=mode,
              **options)
    toks, cut = [], {}

    def outputs() -> list[torch.Tensor]:
        ids = torch.stack(toks, 1).cpu() if toks else torch.empty(run.B, 0, dtype=torch.long)
        n = run.state.n_out.cpu()
        return [torch.cat([torch.tensor(run.prefix[b], dtype=torch.long), ids[b, :int(n[b])]])
                for b in range(run.B)]

    def check_stops() -> None:
        if stop is None:
            return
        found = {}
        for b, ids in enumerate(outputs()):
            if b not in cut and (keep := stop(ids)) is not None:
                found[b] = keep
        if found:
            cut.update(found)
            run.finish(list(found))

    while True:
        toks.append(run.step())
        if run.steps % sync_every == 0 or run.steps >= max_new_tokens:
            check_stops()
            if run.all_done():
                break
    check_stops()
    return [ids[:cut[b]] if b in cut else ids for b, ids in enumerate(outputs())]


def iter_ids(run: Run) -> Iterator[int]:
    """A one-row run's tokens one at a time as host ints (a sync per token, for streaming), prefix first."""
    if run.B != 1:
        raise ValueError(f"iter_ids streams one row, the run has {run.B}")
    yield from run.prefix[0]
    while not run.all_done():
        yield int(run.step()[0])


# ------------------------------------------------------------------ documents

DEFAULT_MAX_NEW_TOKENS = 256  # text / mixed modes, capped by the context left after the longest prompt


def _prepare(model, tokenizer, prompts: Sequence[Document], mode: str, max_new_tokens: int | None,
             stop: Sequence[str] | str) -> tuple[list[torch.Tensor], int, StopStrings | None]:
    """Encode prompts (bos, no eos), pick the budget, check that images can be decoded if asked for."""
    if mode != "text" and getattr(tokenizer.image, "decoder", True) is None:
        raise ValueError(f"mode={mode!r} generates images, but this image tokenizer has no VQ decoder "
                         "(e.g. a converted HF Chameleon checkpoint); use mode='text'")
    if tokenizer.vocab != model.cfg.vocab:
        raise ValueError("the tokenizer's vocabulary does not match the model's")
    ids = tokenizer.encode_batch(list(prompts), bos=True, eos=False)
    if max_new_tokens is None:
        N = tokenizer.tokens_per_image
        room = model.cfg.max_seq_len - max(len(p) for p in ids) - (mode == "image")
        max_new_tokens = N + 1 if mode == "image" else max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
    stops = StopStrings(stop, tokenizer.vocab, tokenizer.text.decode) if stop else None
    return ids, max_new_tokens, stops


def generate_documents(model, tokenizer, prompts: Sequence[Document], *, max_new_tokens: int | None = None,
                       mode: str = "mixed", stop: Sequence[str] | str = (), **options) -> list[Document]:
    """The continuation of each prompt as a Document (``options`` as ``generate_ids``)."""
    ids, max_new_tokens, stops = _prepare(model, tokenizer, prompts, mode, max_new_tokens, stop)
    out = generate_ids(model, ids, max_new_tokens=max_new_tokens, tokens_per_image=tokenizer.tokens_per_image,
                       mode=mode, stop=stops, **options)
    docs = tokenizer.decode_batch(out, strict=False)
    return [stops.trim(d) for d in docs] if stops else docs


def stream_document(model, tokenizer, prompt: Document, *, max_new_tokens: int | None = None, mode: str = "mixed",
                    stop: Sequence[str] | str = (), **options) -> Iterator[str | PILImage.Image]:
    """Yield text pieces (str) and finished images (PIL) as they are generated.

    Joining consecutive pieces gives exactly the Text segments of ``generate_documents``: a piece is only
    yielded once its characters are final (an incomplete UTF-8 byte sequence is held back).
    """
    (ids,), max_new_tokens, stops = _prepare(model, tokenizer, [prompt], mode, max_new_tokens, stop)
    run = Run(model, [ids], max_new_tokens=max_new_tokens, tokens_per_image=tokenizer.tokens_per_image, mode=mode,
              **options)
    v = tokenizer.vocab
    is_text = text_id_mask(v).tolist()
    pieces: list[int] = []
    codes: list[int] | None = None  # not None while inside an image
    emitted = ""

    def text() -> str:
        return tokenizer.text.decode(v.text_pieces(torch.tensor(pieces, dtype=torch.long)).tolist())

    for tok in iter_ids(run):
        if codes is not None:
            if tok == v.eoi_id:
                yield tokenizer.image.decode_images(v.image_codes(torch.tensor([codes])))[0]
                codes = None
            else:
                codes.append(tok)
        elif tok == v.boi_id:
            if (rest := text()[len(emitted):]):
                yield rest
            pieces, emitted, codes = [], "", []
        elif is_text[tok]:
            pieces.append(tok)
            full = text()
            end = stop_end(full, stops.stops) if stops else None
            if end is not None:
                if full[len(emitted):end]:
                    yield full[len(emitted):end]
                return
            ready = full.rstrip("\ufffd")
            if len(ready) > len(emitted) and ready.startswith(emitted):
                yield ready[len(emitted):]
                emitted = ready
    if (rest := text()[len(emitted):]):
        yield rest
