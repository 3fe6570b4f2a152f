"""A decode session: one batched generation over a static KV cache, one decoder pass per ``step()``.

A pass emits one token per row, or, in a speculative session, 1..W tokens for each row inside an image
(``speculative.py``); the tokens land in a device buffer that ``collect`` reads. The host syncs in ``collect``
and, in a speculative session, once per pass to pick the pass's kind (a window of W tokens when any live row is
inside an image, else one token) and each row's draws. At a sync, a row whose logits went NaN / inf (flagged on
the device) becomes a FloatingPointError naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fusion.inference.config import GenerationConfig
from fusion.inference.noise import RowNoise, RowSeed
from fusion.inference.prompts import PromptBatch, prepare_prompts
from fusion.inference.speculative import Window, window_step
from fusion.inference.step import Knobs, Masks, RowState, StepOptions, choose, compiled, decode_one
from fusion.kernels import cpu_paths
from fusion.model.cache import KVCache, bucket_length
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab


def _row_state(batch: PromptBatch, vocab: Vocab, n_codes: int, config: GenerationConfig,
               device: torch.device) -> RowState:
    """Each row's starting state: inside the image its prompt leaves open, the image budget of the mode."""
    B, budget = batch.batch, config.max_new_tokens
    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab.size, dtype=torch.bool)
        for b, p in enumerate(batch.rows[:B]):
            seen[b, p] = True
    images = {"text": 0, "image": 1, "mixed": budget}[config.mode]
    full = lambda value: torch.full((B,), value, dtype=torch.long, device=device)  # noqa: E731
    return RowState(
        in_image=torch.tensor([k is not None for k in batch.open_codes], device=device),
        codes_left=torch.tensor([n_codes - (k or 0) for k in batch.open_codes], device=device),
        images_left=full(images), remaining=full(budget), done=torch.zeros(B, dtype=torch.bool, device=device),
        n_out=full(0), out=torch.full((B, budget + 1), vocab.pad_id, dtype=torch.long, device=device),
        image_passes=full(0), nonfinite=torch.zeros(B, dtype=torch.bool, device=device),
        seen=None if seen is None else seen.to(device))


def step_settings(config: GenerationConfig, vocab: Vocab, n_codes: int, groups: int,
                  device: torch.device) -> tuple[StepOptions, Knobs]:
    """What shapes the step's code (options) and the values it reads (knobs: tensors, never recompiled on)."""
    top_k = int(config.top_k)
    opts = StepOptions(n_codes=n_codes, groups=groups, boi_id=vocab.boi_id, eoi_id=vocab.eoi_id,
                       eos_id=vocab.eos_id, pad_id=vocab.pad_id, image_start=vocab.image_start,
                       codebook=vocab.image_count, guidance_form=config.guidance_form,
                       top_k_cap=max(64, 1 << (top_k - 1).bit_length()) if top_k else 0,  # any k <= cap reuses it
                       use_top_p=config.top_p < 1.0, use_penalty=config.repetition_penalty != 1.0,
                       # a pass emits at most the image's N codes and its eoi
                       window=min(config.speculative_window, n_codes + 1) if uses_windows(config) else 1,
                       coupling=config.speculative_coupling)
    knobs = Knobs.of(device, temperature=config.sampling_temperature, top_k=top_k, top_p=config.top_p,
                     repetition_penalty=config.repetition_penalty, guidance_scale=config.guidance_scale,
                     image_guidance_scale=config.image_guidance_scale or 1.0)
    return opts, knobs


def uses_windows(config: GenerationConfig) -> bool:
    """Whether a session of ``config`` decodes images speculatively (a text-only call never does)."""
    return bool(config.speculative) and config.mode != "text"


class DecodeSession:
    """Prompts, cache and per-row state of one call; ``step()`` runs one decoder pass over every row.

    ``config`` is complete (``GenerationConfig.resolved``); ``seeds``: one per row (``noise.RowSeed``; default:
    fresh randomness); ``labels`` name the rows in errors. ``compile`` compiles the passes with static shapes:
    the cache length is rounded up (``bucket_length``) so that prompt lengths share a few compiled graphs.
    """

    def __init__(self, model: Transformer, prompts: Sequence[torch.Tensor], config: GenerationConfig, *,
                 tokens_per_image: int, seeds: Sequence[RowSeed] | None = None, compile: bool = False,
                 labels: Sequence[str] | None = None) -> None:
        vocab: Vocab = model.cfg.vocab
        if not isinstance(tokens_per_image, int) or tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be a positive int, got {tokens_per_image!r}")
        if config.max_new_tokens is None or config.speculative is None:
            raise ValueError("DecodeSession takes a complete config (GenerationConfig.resolved)")
        batch = prepare_prompts(prompts, vocab, tokens_per_image, config, config.max_new_tokens,
                                model.cfg.max_seq_len)
        param = next(model.parameters())
        device = param.device
        self.model, self.B, self.prefix, self.budget = model, batch.batch, batch.prefixes, config.max_new_tokens
        self.prompts = batch.rows  # what each cache row was fed: the B prompts, then their guidance copies
        self.passes = 0
        self.opts, self.knobs = step_settings(config, vocab, tokens_per_image, batch.groups, device)
        self.sampling = config.sampling_temperature > 0
        self.masks = Masks.build(vocab, device)
        self.state = _row_state(batch, vocab, tokens_per_image, config, device)
        lengths = torch.tensor([len(p) for p in batch.rows])
        needed = int(lengths.max()) + self.budget
        self.cache = KVCache.allocate(model.cfg, len(batch.rows), bucket_length(needed, model.cfg.max_seq_len)
                                      if compile else needed, device, param.dtype)
        self._prompt_ids = torch.nn.utils.rnn.pad_sequence(batch.rows, batch_first=True, padding_value=vocab.pad_id)
        self._lengths = lengths.to(device)
        if seeds is not None and len(seeds) != self.B:
            raise ValueError(f"{len(seeds)} seeds for {self.B} rows")
        W = self.opts.window
        self.window = Window.allocate(self.B, W, vocab.image_count, device) if W > 1 else None
        self.noise = RowNoise(seeds if seeds is not None else [None] * self.B, vocab.size, device,
                               (W, vocab.image_count) if W > 1 else None)
        self.labels = list(labels) if labels is not None else [f"row {b}" for b in range(self.B)]
        self._tok: torch.Tensor | None = None
        self.finished = False  # no pass is left to run: the budget is spent, or (known on the host) every row is done
        self._read = [0] * self.B
        self._plain, self._windowed = decode_one, window_step
        if device.type == "cpu":  # measured choices of fast paths, made before anything is traced
            cpu_paths.prepare_decode(model, len(batch.rows), (1, W) if W > 1 else (1,), self.cache.k[0], compile)
        if compile:
            if device.type == "cuda":  # CUDA graphs replay fixed addresses: what a step writes, or reads refilled
                static = self.cache.k + self.cache.v + [self.cache.seqlens] + self.state.tensors()
                static += (self.window.tensors() if self.window else []) + self.noise.tensors()
                for t in static:
                    torch._dynamo.mark_static_address(t)
            self._plain, self._windowed = compiled(decode_one, device.type), compiled(window_step, device.type)

    @torch.no_grad()
    def step(self) -> None:
        """One decoder pass over every row (finished rows emit nothing); no host sync unless speculative."""
        if self.finished:
            raise RuntimeError("the session is over: its token budget is spent, or every row is done")
        s, noise = self.state, self.noise
        if self._tok is None:  # the ragged prefill of every prompt
            if self.sampling:
                noise.fill()
            logits = self.model.next_logits(self._prompt_ids.to(self._lengths.device), self.cache, self._lengths)
            tok = choose(logits, s, self.masks, self.opts, self.knobs, noise.text)
        elif self.window is not None:  # one sync: the pass's kind and each row's draws follow the rows' modes
            live, image_rows = torch.stack([~s.done, s.in_image & ~s.done]).tolist()
            if not any(live):
                self.finished = True
                return
            if self.sampling:
                noise.fill(image_rows)
            tok = (self._windowed(self.model, self.cache, self._tok, self.window, s, self.masks, self.opts,
                                  self.knobs, noise.text, noise.codes, noise.uniform) if any(image_rows) else
                   self._plain(self.model, self.cache, self._tok, s, self.masks, self.opts, self.knobs, noise.text))
        else:
            if self.sampling:
                noise.fill()
            tok = self._plain(self.model, self.cache, self._tok, s, self.masks, self.opts, self.knobs, noise.text)
        self._tok = tok.clone()  # a CUDA-graph output is overwritten by the next replay
        self.passes += 1
        self.finished = self.passes >= self.budget

    def collect(self) -> tuple[list[list[int]], bool]:
        """Host sync: each row's tokens since the last ``collect`` (ids, on the host) and whether the session
        is over. A FloatingPointError if a row's logits went NaN / inf, or its processors (top-k / top-p, a
        banned-token hook) left it nothing to sample."""
        s = self.state
        n_out, done, broken = torch.stack([s.n_out, s.done.long(), s.nonfinite.long()]).tolist()
        if any(broken):
            rows = [self.labels[b] for b, bad in enumerate(broken) if bad]
            raise FloatingPointError(
                f"the model's logits became NaN or inf, or nothing was left to sample, in {', '.join(rows)}: its "
                "weights or activations overflow (float16? try bfloat16 or float32), or a logits hook banned "
                "every allowed id; nothing it samples is meaningful")
        lo, hi = min(self._read), max(n_out)
        block = s.out[:, lo:hi].tolist() if hi > lo else [[] for _ in range(self.B)]
        new = [row[start - lo:end - lo] for row, start, end in zip(block, self._read, n_out, strict=True)]
        self._read = n_out
        return new, all(done) or self.finished

    def finish(self, rows: Sequence[int]) -> None:
        """Mark rows finished (e.g. a stop string matched on the host)."""
        self.state.done[torch.tensor(list(rows), dtype=torch.long, device=self.state.done.device)] = True

    def image_passes(self) -> list[int]:
        """Host sync: per row, the passes it began inside an image (decoder calls from boi to eoi)."""
        return self.state.image_passes.tolist()
