"""A decode session: one call's rows, decoded together on an engine (``slots.Slots``) sized to them.

One ``step()`` is one decoder pass. A pass emits one token per row, or, in a speculative session, 1..W tokens
for each row inside an image (``speculative.py``). The host syncs in ``collect`` and, in a speculative session,
once per pass to pick the pass's kind (a window of W tokens when any live row is inside an image, else one
token) and each row's draws. At a sync, a row whose logits went NaN / inf (flagged on the device) becomes a
FloatingPointError naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fusion.inference.config import GenerationConfig
from fusion.inference.noise import RowSeed
from fusion.inference.prompts import prepare_prompts
from fusion.inference.slots import Slots
from fusion.model.cache import bucket_length
from fusion.model.transformer import Transformer


class DecodeSession:
    """Prompts, cache and per-row state of one call; ``step()`` runs one decoder pass over every row.

    ``config`` is complete (``GenerationConfig.resolved``); ``seeds``: one per row (``noise.RowSeed``; default:
    fresh randomness); ``labels`` name the rows in errors. ``compile`` compiles the passes with static shapes:
    the cache length is rounded up (``bucket_length``) so that prompt lengths share a few compiled graphs.
    """

    def __init__(self, model: Transformer, prompts: Sequence[torch.Tensor], config: GenerationConfig, *,
                 tokens_per_image: int, seeds: Sequence[RowSeed] | None = None, compile: bool = False,
                 labels: Sequence[str] | None = None) -> None:
        if not isinstance(tokens_per_image, int) or tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be a positive int, got {tokens_per_image!r}")
        if config.max_new_tokens is None or config.speculative is None:
            raise ValueError("DecodeSession takes a complete config (GenerationConfig.resolved)")
        batch = prepare_prompts(prompts, model.cfg.vocab, tokens_per_image, config, config.max_new_tokens,
                                model.cfg.max_seq_len)
        if seeds is not None and len(seeds) != batch.batch:
            raise ValueError(f"{len(seeds)} seeds for {batch.batch} rows")
        self.B, self.prefix, self.budget = batch.batch, batch.prefixes, config.max_new_tokens
        self.prompts = batch.rows  # what each cache row was fed: the B prompts, then their guidance copies
        needed = max(len(p) for p in batch.rows) + self.budget
        self.engine = Slots(model, rows=len(batch.rows), tokens_per_image=tokens_per_image, config=config,
                            length=bucket_length(needed, model.cfg.max_seq_len) if compile else needed,
                            track_seen=config.repetition_penalty != 1.0, compile=compile)
        self.group = self.engine.admit(batch, config, seeds if seeds is not None else [None] * self.B)
        self.labels = list(labels) if labels is not None else [f"row {b}" for b in range(self.B)]
        # no pass is left to run: the budget is spent, or (known on the host) every row is done
        self.finished = self.passes >= self.budget

    @property
    def passes(self) -> int:
        """Decoder passes so far, the prefill included."""
        return self.engine.passes + 1

    @property
    def cache(self):
        return self.engine.cache

    @property
    def state(self):
        return self.engine.state

    @property
    def window(self):
        return self.engine.window

    @property
    def noise(self):
        return self.engine.noise

    def step(self) -> None:
        """One decoder pass over every row (finished rows emit nothing); no host sync unless speculative."""
        if self.finished:
            raise RuntimeError("the session is over: its token budget is spent, or every row is done")
        if not self.engine.step():
            self.finished = True
            return
        self.finished = self.passes >= self.budget

    def collect(self) -> tuple[list[list[int]], bool]:
        """Host sync: each row's tokens since the last ``collect`` (ids, on the host) and whether the session
        is over. A FloatingPointError if a row's logits went NaN / inf, or its processors (top-k / top-p, a
        banned-token hook) left it nothing to sample."""
        new, done, broken = self.engine.read(self.group.rows)
        if any(broken):
            rows = [self.labels[b] for b, bad in enumerate(broken) if bad]
            raise FloatingPointError(
                f"the model's logits became NaN or inf, or nothing was left to sample, in {', '.join(rows)}: its "
                "weights or activations overflow (float16? try bfloat16 or float32), or a logits hook banned "
                "every allowed id; nothing it samples is meaningful")
        return new, all(done) or self.finished

    def finish(self, rows: Sequence[int]) -> None:
        """Mark rows finished (e.g. a stop string matched on the host)."""
        self.engine.finish([self.group.rows[b] for b in rows])

    def image_passes(self) -> list[int]:
        """Host sync: per row, the passes it began inside an image (decoder calls from boi to eoi)."""
        return self.engine.state.image_passes[:self.B].tolist()
