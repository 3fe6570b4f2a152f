"""Each row's own random stream: the Exp(1) noise the sampler divides by (``sampling.sample``).

A row draws from its own generator, so its sample never depends on the rows batched with it or on its position.
``seed`` for a call: None (fresh randomness from the OS), an int (every row's stream seeded with it; sample k of
``num_return_sequences`` uses ``seed + k``), or a list of ints / ``torch.Generator`` s, one per output row.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

RowSeed = int | torch.Generator | None
Seed = int | Sequence[int | torch.Generator] | None


@dataclass(frozen=True)
class Rows:
    """The rows of a call: each prompt repeated ``num_return_sequences`` times (grouped by prompt), with seeds."""

    prompts: list
    seeds: list[RowSeed]
    labels: list[str]  # how errors name a row: "prompt 2" or "prompt 2, sample 1"


def expand_rows(prompts: Sequence, seed: Seed, num_return_sequences: int) -> Rows:
    """``len(prompts) * num_return_sequences`` rows, prompt-major, each with its seed (see the module doc)."""
    n = num_return_sequences
    rows = [p for p in prompts for _ in range(n)]
    if seed is None:
        seeds: list[RowSeed] = [None] * len(rows)
    elif isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + k for _ in prompts for k in range(n)]
    elif isinstance(seed, (list, tuple)):
        if len(seed) != len(rows):
            raise ValueError(f"seed lists one seed per output row: {len(prompts)} prompt(s) x "
                             f"num_return_sequences={n} = {len(rows)}, got {len(seed)}")
        seeds = list(seed)
        bad = [i for i, s in enumerate(seeds) if isinstance(s, bool) or not isinstance(s, (int, torch.Generator))]
        if bad:
            raise TypeError(f"seed[{bad[0]}] must be an int or a torch.Generator, got {type(seeds[bad[0]]).__name__}")
    else:
        raise TypeError(f"seed must be None, an int, or a list of ints / torch.Generators (one per row), "
                        f"got {type(seed).__name__}")
    labels = [f"prompt {i}" + (f", sample {k}" if n > 1 else "") for i in range(len(prompts)) for k in range(n)]
    return Rows(rows, seeds, labels)


def _generator(seed: RowSeed, device: torch.device) -> torch.Generator:
    """A generator on ``device``: a caller's own when it already lives there, else one seeded from ``seed``."""
    if isinstance(seed, torch.Generator):
        if seed.device == device:
            return seed
        # A generator on another device cannot fill this device's tensors: it seeds a stream here instead.
        seed = int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device))
    return torch.Generator(device).manual_seed(secrets.randbits(62) if seed is None else seed)


class RowNoise:
    """Each row's draws for one pass, refilled from the row's own generator.

    A row decoding one token draws ``text`` [V] Exp(1) values (the sampler's noise); a row inside an image of a
    speculative session draws ``codes`` [W, C] Exp(1) values and ``uniform`` [W] Uniform(0, 1) values instead.
    So a pass takes a fixed amount of a row's stream, set by the row's own mode, whatever its batch or however
    many tokens the pass accepts. Only rows given a generator (``assign``) draw: guidance copies and free slots
    do not. Unfilled (greedy), ``text`` and ``codes`` hold ones and ``uniform`` zeros.
    """

    def __init__(self, rows: int, vocab_size: int, device: torch.device,
                 window: tuple[int, int] | None = None) -> None:
        self.device = device
        self.generators: list[torch.Generator | None] = [None] * rows
        self.text = torch.ones(rows, vocab_size, device=device)
        self.codes = torch.ones(rows, *window, device=device) if window else None
        self.uniform = torch.zeros(rows, window[0], device=device) if window else None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.text, self.codes, self.uniform) if t is not None]

    def assign(self, row: int, seed: RowSeed) -> None:
        """Give ``row`` its own stream (``seed``: see the module doc)."""
        self.generators[row] = _generator(seed, self.device)

    def release(self, row: int) -> None:
        self.generators[row] = None

    def fill(self, image_rows: Sequence[bool] | None = None, rows: Sequence[int] | None = None) -> None:
        """Fresh draws for each row with a generator (of ``rows``, default all): ``image_rows[b]`` True takes the
        speculative draws, else the text draws."""
        for b in range(len(self.generators)) if rows is None else rows:
            g = self.generators[b]
            if g is None:
                continue
            if image_rows is not None and image_rows[b]:
                self.codes[b].exponential_(generator=g)
                self.uniform[b].uniform_(generator=g)
            else:
                self.text[b].exponential_(generator=g)
