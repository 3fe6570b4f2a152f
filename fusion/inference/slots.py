"""The decoding engine: a static KV cache of ``rows`` slots that groups of rows join and leave between passes.

``admit`` prefills a group's prompts (a call's, or one server request's, with their guidance copies) in a cache of
their own, exactly as if they were decoded alone, samples their first tokens, and writes them into free slots
(``KVCache.load``). Every ``step`` then runs one decoder pass over all slots (``step.decode_one``, or a
speculative window pass, ``speculative.window_step``); ``read`` hands out each slot's tokens since the last read;
``release`` frees slots at once. Each slot keeps its own sampling values (``Knobs`` per row), its own random
stream (``RowNoise``; drawn only while it is admitted), its own budget and mode (``RowState``), and finds its
guidance copies by index (``Copies``). So a row's tokens never depend on the slots around it: what a group gets
is what it gets alone, up to the rounding of other matmul shapes (none in float64).

What shapes the compiled pass's code (``StepOptions``) is the union over the admitted groups: guidance copies
(1-3), top-k's cap, whether top-p and the repetition penalty run; a row that does not use one is left as it
was (top-k 0, top-p 1 and penalty 1 change nothing). The guidance form, the speculative window and its coupling
are the engine's own: a group that needs others waits for another engine (``compatible``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusion.inference.config import GenerationConfig
from fusion.inference.noise import RowNoise, RowSeed
from fusion.inference.prompts import PromptBatch
from fusion.inference.speculative import Window, window_step
from fusion.inference.step import Copies, Knobs, Masks, RowState, StepOptions, choose, compiled, decode_one
from fusion.kernels import cpu_paths
from fusion.model.cache import KVCache
from fusion.model.transformer import Transformer
from fusion.tokenizers.grammar import codes_owed, ids_to_close

KNOB_DEFAULTS = dict(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, guidance_scale=1.0,
                     image_guidance_scale=1.0)  # what a free slot holds: every processor a no-op


def uses_windows(config: GenerationConfig) -> bool:
    """Whether rows of ``config`` decode images speculatively (a text-only call never does)."""
    return bool(config.speculative) and config.mode != "text"


def engine_options(config: GenerationConfig, n_codes: int) -> dict:
    """What an engine fixes for every group it takes: the guidance form, the speculative window and coupling."""
    window = min(config.speculative_window, ids_to_close(n_codes)) if uses_windows(config) else 1  # a pass: <= N + eoi
    return dict(guidance_form=config.guidance_form, window=window, coupling=config.speculative_coupling)


def group_options(config: GenerationConfig, groups: int) -> dict:
    """What one group needs of the pass's code (the union over groups is taken): copies, top-k cap, top-p, penalty."""
    top_k = int(config.top_k)
    return dict(groups=groups, top_k_cap=max(64, 1 << (top_k - 1).bit_length()) if top_k else 0,  # any k <= cap
                use_top_p=config.top_p < 1.0, use_penalty=config.repetition_penalty != 1.0)


def group_knobs(config: GenerationConfig) -> dict[str, float]:
    return dict(temperature=config.sampling_temperature, top_k=int(config.top_k), top_p=config.top_p,
                repetition_penalty=config.repetition_penalty, guidance_scale=config.guidance_scale,
                image_guidance_scale=config.image_guidance_scale or 1.0)


def row_state(batch: PromptBatch, vocab, n_codes: int, config: GenerationConfig, width: int, track_seen: bool,
              device: torch.device) -> RowState:
    """A group's starting state, its copies included (marked done: their own samples are never used): each row
    inside the image its prompt leaves open, with the mode's image budget; ``out`` has ``width`` columns."""
    B, R, budget = batch.batch, len(batch.rows), config.max_new_tokens
    seen = None
    if track_seen:
        seen = torch.zeros(R, vocab.size, dtype=torch.bool)
        for b, p in enumerate(batch.rows[:B]):
            seen[b, p] = True
    images = {"text": 0, "image": 1, "mixed": budget}[config.mode]
    opens = batch.open_codes + batch.open_codes * (batch.groups - 1)
    full = lambda value: torch.full((R,), value, dtype=torch.long, device=device)  # noqa: E731
    return RowState(
        in_image=torch.tensor([k is not None for k in opens], device=device),
        codes_left=torch.tensor([codes_owed(n_codes, k or 0) for k in opens], device=device),
        images_left=full(images), remaining=full(budget), done=torch.arange(R, device=device) >= B,
        n_out=full(0), out=torch.full((R, width), vocab.pad_id, dtype=torch.long, device=device),
        image_passes=full(0), nonfinite=torch.zeros(R, dtype=torch.bool, device=device),
        seen=None if seen is None else seen.to(device))


@dataclass(frozen=True)
class Group:
    """Where an admitted group sits: ``rows`` its B own rows' slots (prompt-major), ``slots`` all of them with the
    copies; ``options`` what it needs of the pass (``group_options``)."""

    rows: list[int]
    slots: list[int]
    options: dict


class Slots:
    """The engine (see the module doc). ``length``: cache positions per slot; ``track_seen``: keep the ids each
    row has seen, for the repetition penalty (a server keeps them always; a call only when it uses the penalty)."""

    def __init__(self, model: Transformer, *, rows: int, length: int, tokens_per_image: int,
                 config: GenerationConfig, track_seen: bool, compile: bool = False) -> None:
        vocab = model.cfg.vocab
        param = next(model.parameters())
        device = self.device = param.device
        self.model, self.vocab, self.n_codes, self.track_seen = model, vocab, tokens_per_image, track_seen
        self.engine = engine_options(config, tokens_per_image)
        self.base = StepOptions(n_codes=tokens_per_image, groups=1, boi_id=vocab.boi_id, eoi_id=vocab.eoi_id,
                                eos_id=vocab.eos_id, pad_id=vocab.pad_id, image_start=vocab.image_start,
                                codebook=vocab.image_count, **self.engine)
        self.opts = self.base
        self.masks = Masks.build(vocab, device)
        self.cache = KVCache.allocate(model.cfg, rows, length, device, param.dtype)
        idle = PromptBatch([torch.tensor([vocab.pad_id])] * rows, [[]] * rows, [None] * rows, 1)
        self.state = row_state(idle, vocab, tokens_per_image, GenerationConfig(max_new_tokens=1), length + 1,
                               track_seen, device)
        self.state.done.fill_(True)
        self.knobs = Knobs.of(device, rows, **KNOB_DEFAULTS)
        ident = torch.arange(rows, device=device)
        self.copies = Copies(ident.clone(), ident.clone(), ident.clone(), torch.ones_like(ident))
        W = self.base.window
        self.window = Window.allocate(rows, W, vocab.image_count, device) if W > 1 else None
        self.noise = RowNoise(rows, vocab.size, device, (W, vocab.image_count) if W > 1 else None)
        self.tok = torch.full((rows,), vocab.pad_id, dtype=torch.long, device=device)
        self.free = list(range(rows))
        self.groups: list[Group] = []
        self.passes = 0
        self._read = [0] * rows
        self._idle = torch.ones(rows, dtype=torch.bool, device=device)  # free slots: their cache stays empty
        self._plain, self._windowed = decode_one, window_step
        if device.type == "cpu":  # measured choices of fast paths, made before anything is traced
            cpu_paths.prepare_decode(model, rows, (1, W) if W > 1 else (1,), self.cache.k[0], compile)
        if compile:
            if device.type == "cuda":  # CUDA graphs replay fixed addresses: what a step writes, or reads refilled
                static = self.cache.k + self.cache.v + [self.cache.seqlens, self.tok] + self.state.tensors()
                static += self.knobs.tensors() + self.copies.tensors() + self.noise.tensors()
                for t in static + (self.window.tensors() if self.window else []):
                    torch._dynamo.mark_static_address(t)
            self._plain, self._windowed = compiled(decode_one, device.type), compiled(window_step, device.type)

    def compatible(self, config: GenerationConfig) -> bool:
        """Whether a group of ``config`` can join (the engine's own options match)."""
        return engine_options(config, self.n_codes) == self.engine

    @torch.no_grad()
    def admit(self, batch: PromptBatch, config: GenerationConfig, seeds: Sequence[RowSeed]) -> Group:
        """Prefill ``batch`` (its rows, then their copies) into free slots, sample each row's first token, and
        give each row its stream (``seeds``, one per row; sampled rows only draw). A complete ``config``."""
        R, B = len(batch.rows), batch.batch
        if R > len(self.free) or not self.compatible(config) or len(seeds) != B:
            raise ValueError(f"cannot admit {R} rows ({len(self.free)} free, compatible: "
                             f"{self.compatible(config)}, {len(seeds)} seeds for {B} rows)")
        slots = self.free[:R]  # taken once the prefill has worked
        idx = torch.tensor(slots, device=self.device)
        options = group_options(config, batch.groups)
        opts = dataclasses.replace(self.base, **options)
        knobs = Knobs.of(self.device, **group_knobs(config))
        copies = Copies.group_major(B, batch.groups, self.device)
        state = row_state(batch, self.vocab, self.n_codes, config, self.state.out.shape[1], self.track_seen,
                          self.device)
        lengths = torch.tensor([len(p) for p in batch.rows], device=self.device)
        own = KVCache.allocate(self.model.cfg, R, int(lengths.max()), self.device, self.cache.k[0].dtype)
        ids = torch.nn.utils.rnn.pad_sequence(batch.rows, batch_first=True, padding_value=self.vocab.pad_id)
        logits = self.model.next_logits(ids.to(self.device), own, lengths)
        try:
            if config.sampling_temperature > 0:
                for slot, seed in zip(slots, seeds, strict=False):
                    self.noise.assign(slot, seed)
                self.noise.fill(rows=slots[:B])
            tok = choose(logits, state, self.masks, opts, knobs, copies, self.noise.text[idx])
        except Exception:
            for slot in slots:
                self.noise.release(slot)
            raise
        self.free = self.free[R:]
        self.cache.load(idx, own)
        for mine, theirs in zip(self.state.tensors(), state.tensors(), strict=True):
            mine[idx] = theirs
        for name, value in dataclasses.asdict(knobs).items():
            getattr(self.knobs, name)[idx] = value
        for mine, theirs in ((self.copies.source, copies.source), (self.copies.uncond, copies.uncond),
                             (self.copies.image_only, copies.image_only)):
            mine[idx] = idx[theirs]  # the group's own row numbers, as slots
        self.copies.groups[idx] = copies.groups
        if self.window is not None:
            self.window.active[idx] = False
            self.window.noise_kept[idx] = False
        self.tok[idx] = tok
        self._idle[idx] = False
        for slot in slots:
            self._read[slot] = 0
        group = Group(slots[:B], slots, options)
        self.groups.append(group)
        self._union()
        return group

    def release(self, group: Group) -> None:
        """Free a group's slots at once (finished or cancelled); they take part in no more passes' results."""
        idx = torch.tensor(group.slots, device=self.device)
        self.state.done[idx] = True
        self._idle[idx] = True
        self.cache.seqlens[idx] = 0
        for name, value in KNOB_DEFAULTS.items():
            getattr(self.knobs, name)[idx] = value
        for t in (self.copies.source, self.copies.uncond, self.copies.image_only):
            t[idx] = idx
        self.copies.groups[idx] = 1
        for slot in group.slots:
            self.noise.release(slot)
        self.groups.remove(group)
        self.free = sorted(self.free + group.slots)
        self._union()

    def _union(self) -> None:
        """The pass's options: what any admitted group needs."""
        need = [g.options for g in self.groups]
        self.opts = dataclasses.replace(
            self.base, groups=max((o["groups"] for o in need), default=1),
            top_k_cap=max((o["top_k_cap"] for o in need), default=0),
            use_top_p=any(o["use_top_p"] for o in need), use_penalty=any(o["use_penalty"] for o in need))

    @torch.no_grad()
    def step(self) -> bool:
        """One decoder pass over every slot; False (and no pass) when no row is live. A plain engine does not sync
        with the host here; a speculative one syncs once, to pick the pass's kind and each row's draws."""
        s, noise, opts = self.state, self.noise, self.opts
        self.cache.seqlens.masked_fill_(self._idle, 0)  # a free slot is fed pad each pass: keep it empty
        if self.window is not None:
            live, image_rows = torch.stack([~s.done, s.in_image & ~s.done]).tolist()
            if not any(live):
                return False
            noise.fill(image_rows)
            if any(image_rows):
                tok = self._windowed(self.model, self.cache, self.tok, self.window, s, self.masks, opts, self.knobs,
                                     self.copies, noise.text, noise.codes, noise.uniform)
            else:
                tok = self._plain(self.model, self.cache, self.tok, s, self.masks, opts, self.knobs, self.copies,
                                  noise.text)
        else:
            noise.fill()
            tok = self._plain(self.model, self.cache, self.tok, s, self.masks, opts, self.knobs, self.copies,
                              noise.text)
        self.tok.copy_(tok)  # a CUDA-graph output is overwritten by the next replay
        self.passes += 1
        return True

    def read(self, slots: Sequence[int]) -> tuple[list[list[int]], list[bool], list[bool]]:
        """Host sync: for each of ``slots``, its tokens since the last read, whether it is done, and whether its
        logits went NaN / inf or it had nothing left to sample."""
        if not slots:
            return [], [], []
        s = self.state
        idx = torch.tensor(list(slots), device=self.device)
        n_out, done, broken = torch.stack([s.n_out[idx], s.done[idx].long(), s.nonfinite[idx].long()]).tolist()
        lo, hi = min(self._read[b] for b in slots), max(n_out, default=0)
        block = s.out[idx, lo:hi].tolist() if hi > lo else [[] for _ in slots]
        new = [row[self._read[b] - lo:end - lo] for b, row, end in zip(slots, block, n_out, strict=True)]
        for b, end in zip(slots, n_out, strict=True):
            self._read[b] = end
        return new, [bool(d) for d in done], [bool(x) for x in broken]

    def finish(self, slots: Sequence[int]) -> None:
        """Mark rows finished (a stop string matched on the host, a client left)."""
        self.state.done[torch.tensor(list(slots), dtype=torch.long, device=self.device)] = True
