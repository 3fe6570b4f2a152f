"""A decode session: one batched generation over a static KV cache, a token per row per ``step()``.

The host syncs only where the caller asks (``all_done``, ``iter_steps``); that is also where a row whose logits
went NaN / inf (flagged on the device by ``step.choose``) becomes a FloatingPointError naming the row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from fusion.inference.config import GenerationConfig
from fusion.inference.noise import RowNoise, RowSeed
from fusion.inference.prompts import PromptBatch, prepare_prompts
from fusion.inference.step import Knobs, Masks, RowState, StepOptions, choose, compiled_decode_one, decode_one
from fusion.model.cache import KVCache
from fusion.vocab import Vocab


def _row_state(batch: PromptBatch, vocab: Vocab, n_codes: int, config: GenerationConfig, max_new_tokens: int,
               device: torch.device) -> RowState:
    """Each row's starting state: inside the image its prompt leaves open, the image budget of the mode."""
    B = batch.batch
    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab.size, dtype=torch.bool)
        for b, p in enumerate(batch.rows[:B]):
            seen[b, p] = True
    images = {"text": 0, "image": 1, "mixed": max_new_tokens}[config.mode]
    full = lambda value: torch.full((B,), value, dtype=torch.long, device=device)  # noqa: E731
    return RowState(
        in_image=torch.tensor([k is not None for k in batch.open_codes], device=device),
        codes_left=torch.tensor([n_codes - (k or 0) for k in batch.open_codes], device=device),
        images_left=full(images), remaining=full(max_new_tokens),
        done=torch.zeros(B, dtype=torch.bool, device=device), n_out=full(0),
        nonfinite=torch.zeros(B, dtype=torch.bool, device=device), seen=None if seen is None else seen.to(device))


def step_settings(config: GenerationConfig, vocab: Vocab, n_codes: int, groups: int,
                  device: torch.device) -> tuple[StepOptions, Knobs]:
    """What shapes the step's code (options) and the values it reads (knobs: tensors, never recompiled on)."""
    top_k = int(config.top_k)
    opts = StepOptions(n_codes=n_codes, groups=groups, boi_id=vocab.boi_id, eoi_id=vocab.eoi_id,
                       eos_id=vocab.eos_id, guidance_form=config.guidance_form,
                       top_k_cap=max(64, 1 << (top_k - 1).bit_length()) if top_k else 0,  # any k <= cap reuses it
                       use_top_p=config.top_p < 1.0, use_penalty=config.repetition_penalty != 1.0)
    knobs = Knobs.of(device, temperature=config.sampling_temperature, top_k=top_k, top_p=config.top_p,
                     repetition_penalty=config.repetition_penalty, guidance_scale=config.guidance_scale,
                     image_guidance_scale=config.image_guidance_scale or 1.0)
    return opts, knobs


class DecodeSession:
    """Prompts, cache and per-row state; ``step()`` returns the next token of every row, on the device.

    ``seeds``: one per row (``noise.RowSeed``; default: fresh randomness); ``labels`` name the rows in errors.
    """

    def __init__(self, model, prompts: Sequence[torch.Tensor], config: GenerationConfig, *, max_new_tokens: int,
                 tokens_per_image: int, seeds: Sequence[RowSeed] | None = None, compile: bool = False,
                 labels: Sequence[str] | None = None) -> None:
        vocab: Vocab = model.cfg.vocab
        if not isinstance(tokens_per_image, int) or tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be a positive int, got {tokens_per_image!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        batch = prepare_prompts(prompts, vocab, tokens_per_image, config, max_new_tokens, model.cfg.max_seq_len)
        param = next(model.parameters())
        device = param.device
        self.model, self.B, self.prefix = model, batch.batch, batch.prefixes
        self.max_new_tokens, self.steps = max_new_tokens, 0
        self.opts, self.knobs = step_settings(config, vocab, tokens_per_image, batch.groups, device)
        self.sampling = config.sampling_temperature > 0
        self.masks = Masks.build(vocab, device)
        self.state = _row_state(batch, vocab, tokens_per_image, config, max_new_tokens, device)
        lengths = torch.tensor([len(p) for p in batch.rows])
        self.cache = KVCache.allocate(model.cfg, len(batch.rows), int(lengths.max()) + max_new_tokens, device,
                                      param.dtype)
        self._prompt_ids = torch.nn.utils.rnn.pad_sequence(batch.rows, batch_first=True, padding_value=vocab.pad_id)
        self._lengths = lengths.to(device)
        if seeds is not None and len(seeds) != self.B:
            raise ValueError(f"{len(seeds)} seeds for {self.B} rows")
        self._noise = RowNoise(seeds if seeds is not None else [None] * self.B, vocab.size, device)
        self.labels = list(labels) if labels is not None else [f"row {b}" for b in range(self.B)]
        self._tok: torch.Tensor | None = None
        self._step_fn = decode_one
        if compile:
            if device.type == "cuda":  # CUDA graphs replay fixed addresses
                for t in self.cache.k + self.cache.v + [self.cache.seqlens] + self.state.tensors():
                    torch._dynamo.mark_static_address(t)
            self._step_fn = compiled_decode_one(device.type)

    def _fill_noise(self) -> torch.Tensor:
        return self._noise.fill() if self.sampling else self._noise.buffer

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """The next token of every row [B] (pad for finished rows), on the device; no host sync."""
        if self.steps >= self.max_new_tokens:
            raise RuntimeError("the token budget is spent")
        noise = self._fill_noise()
        if self._tok is None:  # the ragged prefill of every prompt
            logits = self.model.next_logits(self._prompt_ids.to(self._lengths.device), self.cache, self._lengths)
            tok = choose(logits, self.state, self.masks, self.opts, self.knobs, noise)
        else:
            tok = self._step_fn(self.model, self.cache, self._tok, self.state, self.masks, self.opts, self.knobs,
                                noise)
        self._tok = tok.clone()  # a CUDA-graph output is overwritten by the next replay
        self.steps += 1
        return self._tok

    def all_done(self) -> bool:
        """Host sync: have all rows finished? A FloatingPointError if a row's logits went NaN / inf, or its
        processors (top-k / top-p, a banned-token hook) left it nothing to sample."""
        done, broken = torch.stack([self.state.done.all(), self.state.nonfinite.any()]).tolist()
        if broken:
            rows = self.state.nonfinite.nonzero().flatten().tolist()
            raise FloatingPointError(
                f"the model's logits became NaN or inf, or nothing was left to sample, in "
                f"{', '.join(self.labels[b] for b in rows)}: its weights or activations overflow (float16? try "
                "bfloat16 or float32), or a logits hook banned every allowed id; nothing it samples is meaningful")
        return self.steps >= self.max_new_tokens or done

    def finish(self, rows: Sequence[int]) -> None:
        """Mark rows finished (e.g. a stop string matched on the host)."""
        self.state.done[torch.tensor(list(rows), dtype=torch.long, device=self.state.done.device)] = True

    def iter_steps(self) -> Iterator[list[tuple[int, int]]]:
        """Each step's new tokens as host ``(row, id)`` pairs, finished rows left out (a sync per step, for
        streaming); the forced prefixes come first."""
        yield [(b, t) for b, prefix in enumerate(self.prefix) for t in prefix]
        seen = [0] * self.B
        while not self.all_done():
            toks, n_out = torch.stack([self.step(), self.state.n_out]).tolist()
            yield [(b, t) for b, (t, n) in enumerate(zip(toks, n_out, strict=True)) if n > seen[b]]
            seen = n_out
