"""The prompts of one generation call: checked, given mode image's forced boi, and copied for guidance.

Guidance copies drop the conditioning as Chameleon does: the unconditional copy keeps ``bos`` and any image
the prompt leaves open; for 3-way guidance a second copy also keeps the prompt's complete images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusion.inference.config import GenerationConfig
from fusion.tokenizers.grammar import IMAGE_KIND, boi_position, codes_owed, ids_to_close, open_codes, split
from fusion.vocab import Vocab


@dataclass(frozen=True)
class PromptBatch:
    """What the model is fed: ``rows`` = the B prompts, then ``groups - 1`` guidance copies of each."""

    rows: list[torch.Tensor]
    prefixes: list[list[int]]       # ids forced before generation (mode image's boi); they head each output
    open_codes: list[int | None]    # codes already written in an image a prompt leaves open, else None
    groups: int

    @property
    def batch(self) -> int:
        return len(self.prefixes)


def guidance_prompt(prompt: torch.Tensor, vocab: Vocab, n_codes: int, keep_images: bool,
                    n_open: int | None) -> torch.Tensor:
    """The prompt with its conditioning dropped: bos, [its complete images,] and any image it leaves open."""
    parts = [prompt[:1]] if len(prompt) and int(prompt[0]) == vocab.bos_id else []
    if keep_images:
        parts += [prompt[run.span] for run in split(prompt.tolist(), vocab, n_codes)
                  if run.kind == IMAGE_KIND and run.closed]
    if n_open is not None:
        parts.append(prompt[boi_position(len(prompt), n_open):])
    return torch.cat(parts) if parts else prompt.new_empty(0)


def check_prompt(i: int, p, vocab: Vocab) -> torch.Tensor:
    """Prompt ``i`` as a 1-D CPU LongTensor of vocabulary ids, or a clear error."""
    if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.dtype not in (torch.long, torch.int):
        raise TypeError(f"prompt {i} must be a 1-D integer tensor")
    if not len(p):
        raise ValueError(f"prompt {i} is empty")
    p = p.long().cpu()
    if int(p.min()) < 0 or int(p.max()) >= vocab.size:
        raise ValueError(f"prompt {i} has ids outside the vocabulary [0, {vocab.size})")
    return p


def prepare_prompts(prompts: Sequence[torch.Tensor], vocab: Vocab, n_codes: int, config: GenerationConfig,
                    max_new_tokens: int, context: int) -> PromptBatch:
    """Check every prompt against the mode, the budget and the model's ``context``; add the guidance copies."""
    if not prompts:
        raise ValueError("no prompts given")
    rows, prefixes, opens = [], [], []
    for i, p in enumerate(prompts):
        p = check_prompt(i, p, vocab)
        k = open_codes(p.tolist(), vocab, n_codes)
        prefix = []
        if config.mode == "text" and k is not None:
            raise ValueError(f"prompt {i} ends inside an image; mode='text' cannot finish it (use 'mixed')")
        if config.mode == "image" and k is None:  # boi forced at once: appended to the prompt, and heads the output
            prefix, k = [vocab.boi_id], 0
            p = torch.cat([p, torch.tensor(prefix)])
        if k is not None and max_new_tokens < ids_to_close(n_codes, k):
            raise ValueError(f"max_new_tokens={max_new_tokens} cannot finish the image of prompt {i}: "
                             f"{codes_owed(n_codes, k)} more codes + eoi are needed")
        if len(p) + max_new_tokens > context:
            raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that "
                             f"exceeds the model's context of {context}")
        rows.append(p)
        prefixes.append(prefix)
        opens.append(k)
    groups = (3 if config.image_guidance_scale is not None else 2) if config.guided else 1
    copies = [(True, 3), (False, 2)]  # (keep images, needed from this many groups)
    for keep, need in copies:
        if groups >= need:
            rows += [guidance_prompt(p, vocab, n_codes, keep, k) for p, k in zip(rows[:len(prefixes)], opens,
                                                                                 strict=True)]
    return PromptBatch(rows, prefixes, opens, groups)
