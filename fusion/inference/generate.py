"""Mixed-modal generation, the public entry points: ids in / ids out, Documents in / Documents out, streaming.

Each takes a ``GenerationConfig`` (default: ``GenerationConfig()``) and keyword overrides of its fields, as
HF's ``generate`` does; they are merged once, here, into a complete config (budget and speculative decoding
resolved). A batch runs as one ragged prefill, then passes over a static KV cache (``session.py``); each row runs
its own modality state machine (``step.py``) and draws from its own random stream (``noise.py``: ``seed`` None,
an int, or one per row). ``num_return_sequences=n`` gives n rows per prompt, grouped by prompt.

There is one decode loop, ``decode``: ``generate_ids`` collects its ids, ``stream_documents`` turns them into
text pieces and images as they come (stop strings are found there, once), and ``generate_documents`` collects
that stream into Documents.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image as PILImage

from fusion.document import Document, Image, Text
from fusion.inference.config import GenerationConfig
from fusion.inference.noise import Seed, expand_rows
from fusion.inference.session import DecodeSession
from fusion.inference.stopping import stop_end
from fusion.model.transformer import Transformer
from fusion.tokenizers.grammar import ids_to_close, images_closed
from fusion.tokenizers.mixed import ImageCodes, MixedTokenizer, StreamDecoder

DEFAULT_MAX_NEW_TOKENS = 256  # text / mixed modes, capped by the context left after the longest prompt
SYNC_EVERY = 8  # passes between host syncs when nothing streams (a sync per pass when it does)


def complete_config(model: Transformer, prompts: Sequence[torch.Tensor], tokens_per_image: int,
                    config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    """The call's config, whole: the overrides merged, the budget (one image in mode image, else up to 256 new
    tokens, capped by the context) and speculative decoding (the device's default) resolved."""
    config = (config or GenerationConfig()).replace(**overrides)
    if config.max_new_tokens is None:
        room = model.cfg.max_seq_len - max(len(p) for p in prompts) - (config.mode == "image")
        one_image = ids_to_close(tokens_per_image)  # after the forced boi: N codes, eoi
        budget = one_image if config.mode == "image" else max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
    else:
        budget = config.max_new_tokens
    return config.resolved(next(model.parameters()).device.type, budget)


def open_session(model: Transformer, prompts: Sequence[torch.Tensor], config: GenerationConfig, *,
                 tokens_per_image: int, seed: Seed, compile: bool) -> DecodeSession:
    """A session over ``num_return_sequences`` rows per prompt, each with its seed."""
    rows = expand_rows(prompts, seed, config.num_return_sequences)
    return DecodeSession(model, rows.prompts, config, tokens_per_image=tokens_per_image, seeds=rows.seeds,
                         compile=compile, labels=rows.labels)


def decode(session: DecodeSession, sync_every: int = SYNC_EVERY) -> Iterator[list[list[int]]]:
    """THE decode loop: yields each row's new ids since the last yield, the forced prefixes first, then every
    ``sync_every`` passes until every row is finished. Between yields the caller may ``session.finish`` rows."""
    yield [list(p) for p in session.prefix]
    over = False
    while not over:
        for _ in range(sync_every):
            if session.finished:
                break
            session.step()
        new, over = session.collect()
        yield new


def generate_ids(model: Transformer, prompts: Sequence[torch.Tensor], config: GenerationConfig | None = None, *,
                 tokens_per_image: int, seed: Seed = None, compile: bool = False,
                 **overrides) -> list[torch.Tensor]:
    """New ids per output row (CPU LongTensors), ending with eos / the final eoi / the budget.

    In mode "image" the output starts with the forced boi. ``max_new_tokens`` defaults as in ``complete_config``.
    """
    config = complete_config(model, prompts, tokens_per_image, config, overrides)
    session = open_session(model, prompts, config, tokens_per_image=tokens_per_image, seed=seed, compile=compile)
    rows: list[list[int]] = [[] for _ in range(session.B)]
    for new in decode(session):
        for row, ids in zip(rows, new, strict=True):
            row += ids
    return [torch.tensor(r, dtype=torch.long) for r in rows]


@dataclass
class Generation:
    """What a documents call did beyond its pieces (pass one in as ``record=``; it is filled when the call ends):
    each row's ids (cut at a stop string), the decoder passes, and per row the passes begun inside an image."""

    ids: list[list[int]] = field(default_factory=list)
    passes: int = 0
    image_passes: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)  # per row: images finished

    @property
    def passes_per_image(self) -> float:
        """Decoder calls from boi to eoi per finished image (a pass counts once, whatever its width or copies)."""
        return sum(self.image_passes) / max(1, sum(self.images))


def prepare_documents(model: Transformer, tokenizer: MixedTokenizer, prompts: Sequence[Document],
                      config: GenerationConfig | None, overrides: dict) -> tuple[list[torch.Tensor], GenerationConfig]:
    """Encode prompts (bos, no eos), complete the config, check that images can be decoded if asked for."""
    config = (config or GenerationConfig()).replace(**overrides)
    if config.mode != "text" and getattr(tokenizer.image, "decoder", True) is None:
        raise ValueError(f"mode={config.mode!r} generates images, but this image tokenizer has no VQ decoder "
                         "(e.g. a converted HF Chameleon checkpoint: attach one with `fusion convert --vqgan "
                         "vqgan.ckpt --vqgan-config vqgan.yaml FOLDER`); use mode='text'")
    if tokenizer.vocab != model.cfg.vocab:
        raise ValueError("the tokenizer's vocabulary does not match the model's")
    ids = tokenizer.encode_batch(list(prompts), bos=True, eos=False)
    return ids, complete_config(model, ids, tokenizer.tokens_per_image, config, {})


def stream_decoders(tokenizer: MixedTokenizer, config: GenerationConfig, rows: int) -> list[StreamDecoder]:
    """One incremental decoder per output row, each ending its row at ``config``'s stop strings."""
    stops = config.stop_strings
    return [StreamDecoder(tokenizer, (lambda text: stop_end(text, stops)) if stops else None) for _ in range(rows)]


def _pieces(model: Transformer, tokenizer: MixedTokenizer, prompts: Sequence[Document],
            config: GenerationConfig | None, overrides: dict, *, seed: Seed, compile: bool, sync_every: int,
            record: Generation | None = None) -> Iterator[tuple[int, str | ImageCodes]]:
    """``(row, piece)``: text pieces, and images as their codes once their eoi is out; rows stop at a stop string."""
    ids, config = prepare_documents(model, tokenizer, prompts, config, overrides)
    session = open_session(model, ids, config, tokens_per_image=tokenizer.tokens_per_image, seed=seed,
                           compile=compile)
    decoders = stream_decoders(tokenizer, config, session.B)
    for new in decode(session, sync_every):
        for b, (decoder, toks) in enumerate(zip(decoders, new, strict=True)):
            if decoder.stopped:
                continue
            for t in toks:
                yield from ((b, piece) for piece in decoder.feed(t))
                if decoder.stopped:
                    session.finish([b])
                    break
    for b, decoder in enumerate(decoders):
        yield from ((b, piece) for piece in decoder.flush())
    if record is not None:
        record.ids, record.passes = [d.ids for d in decoders], session.passes
        record.image_passes = session.image_passes()
        record.images = [images_closed(ids, tokenizer.vocab) for ids in record.ids]


def stream_documents(model: Transformer, tokenizer: MixedTokenizer, prompts: Sequence[Document],
                     config: GenerationConfig | None = None, *, seed: Seed = None, compile: bool = False,
                     record: Generation | None = None, **overrides) -> Iterator[tuple[int, str | PILImage.Image]]:
    """Yield ``(row, piece)``: text pieces (str) and finished images (PIL) of each output row as they come.

    Rows are numbered as ``generate_documents`` returns them. Joining a row's consecutive pieces gives exactly the
    Text segments of its Document: a piece is only yielded once its characters are final (an incomplete UTF-8
    byte sequence is held back). ``record`` (optional) receives the ids and pass counts once the stream ends.
    """
    for b, piece in _pieces(model, tokenizer, prompts, config, overrides, seed=seed, compile=compile, sync_every=1,
                            record=record):
        yield b, (tokenizer.image.decode_images(piece.codes[None])[0] if isinstance(piece, ImageCodes) else piece)


def generate_documents(model: Transformer, tokenizer: MixedTokenizer, prompts: Sequence[Document],
                       config: GenerationConfig | None = None, *, seed: Seed = None, compile: bool = False,
                       record: Generation | None = None, **overrides) -> list[Document]:
    """The continuation of each prompt as a Document (``num_return_sequences`` of them per prompt, in a row): the
    stream, collected; its images decoded together at the end."""
    record = record if record is not None else Generation()
    rows: dict[int, list[str | ImageCodes]] = {}
    for b, piece in _pieces(model, tokenizer, prompts, config, overrides, seed=seed, compile=compile,
                            sync_every=SYNC_EVERY, record=record):
        parts = rows.setdefault(b, [])
        if isinstance(piece, str) and parts and isinstance(parts[-1], str):
            parts[-1] += piece
        else:
            parts.append(piece)
    parts = [rows.get(b, []) for b in range(len(record.ids))]
    codes = [p.codes for row in parts for p in row if isinstance(p, ImageCodes)]
    pictures = iter(tokenizer.image.decode_images(torch.stack(codes)) if codes else [])
    return [Document([Text(p) if isinstance(p, str) else Image(next(pictures)) for p in row]) for row in parts]
