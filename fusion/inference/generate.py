"""Mixed-modal generation, the public entry points: ids in / ids out, Documents in / Documents out, streaming.

Each takes a ``GenerationConfig`` (default: ``GenerationConfig()``) and keyword overrides of its fields, as
HF's ``generate`` does. A batch runs as one ragged prefill, then one token a step over a static KV cache
(``session.py``); each row runs its own modality state machine (``step.py``) and draws from its own random
stream (``noise.py``: ``seed`` None, an int, or one per row). ``num_return_sequences=n`` gives n rows per
prompt, grouped by prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image as PILImage

from fusion.document import Document
from fusion.inference.config import GenerationConfig
from fusion.inference.noise import Seed, expand_rows
from fusion.inference.session import DecodeSession
from fusion.inference.stopping import StopStrings, stop_end
from fusion.tokenizers.mixed import StreamDecoder

StopFn = Callable[[torch.Tensor], "int | None"]
DEFAULT_MAX_NEW_TOKENS = 256  # text / mixed modes, capped by the context left after the longest prompt


def generate_ids(model, prompts: Sequence[torch.Tensor], config: GenerationConfig | None = None, *,
                 tokens_per_image: int, seed: Seed = None, compile: bool = False, stop: StopFn | None = None,
                 sync_every: int = 8, **overrides) -> list[torch.Tensor]:
    """New ids per output row (CPU LongTensors), ending with eos / the final eoi / the budget / a stop match.

    ``max_new_tokens`` must be set. In mode "image" the output starts with the forced boi. ``stop(ids) ->
    keep`` is called on a row's output so far every ``sync_every`` steps and at the end; returning a length
    cuts the row there and ends it.
    """
    config = (config or GenerationConfig()).replace(**overrides)
    if config.max_new_tokens is None:
        raise ValueError("max_new_tokens must be a positive int, got None")
    rows = expand_rows(prompts, seed, config.num_return_sequences)
    session = DecodeSession(model, rows.prompts, config, max_new_tokens=config.max_new_tokens,
                            tokens_per_image=tokens_per_image, seeds=rows.seeds, compile=compile, labels=rows.labels)
    toks, cut = [], {}

    def outputs() -> list[torch.Tensor]:
        ids = torch.stack(toks, 1).cpu() if toks else torch.empty(session.B, 0, dtype=torch.long)
        n = session.state.n_out.cpu()
        return [torch.cat([torch.tensor(session.prefix[b], dtype=torch.long), ids[b, :int(n[b])]])
                for b in range(session.B)]

    def check_stops() -> None:
        if stop is None:
            return
        found = {b: keep for b, ids in enumerate(outputs()) if b not in cut and (keep := stop(ids)) is not None}
        if found:
            cut.update(found)
            session.finish(list(found))

    while True:
        toks.append(session.step())
        if session.steps % sync_every == 0 or session.steps >= config.max_new_tokens:
            check_stops()
            if session.all_done():
                break
    check_stops()
    return [ids[:cut[b]] if b in cut else ids for b, ids in enumerate(outputs())]


def _prepare(model, tokenizer, prompts: Sequence[Document],
             config: GenerationConfig) -> tuple[list[torch.Tensor], GenerationConfig, StopStrings | None]:
    """Encode prompts (bos, no eos), pick the budget, check that images can be decoded if asked for."""
    if config.mode != "text" and getattr(tokenizer.image, "decoder", True) is None:
        raise ValueError(f"mode={config.mode!r} generates images, but this image tokenizer has no VQ decoder "
                         "(e.g. a converted HF Chameleon checkpoint: attach one with `fusion convert --vqgan "
                         "vqgan.ckpt --vqgan-config vqgan.yaml FOLDER`); use mode='text'")
    if tokenizer.vocab != model.cfg.vocab:
        raise ValueError("the tokenizer's vocabulary does not match the model's")
    ids = tokenizer.encode_batch(list(prompts), bos=True, eos=False)
    if config.max_new_tokens is None:
        N = tokenizer.tokens_per_image
        room = model.cfg.max_seq_len - max(len(p) for p in ids) - (config.mode == "image")
        budget = N + 1 if config.mode == "image" else max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
        config = config.replace(max_new_tokens=budget)
    stops = StopStrings(config.stop_strings, tokenizer.vocab, tokenizer.decode_text) if config.stop_strings else None
    return ids, config, stops


def generate_documents(model, tokenizer, prompts: Sequence[Document], config: GenerationConfig | None = None, *,
                       seed: Seed = None, compile: bool = False, **overrides) -> list[Document]:
    """The continuation of each prompt as a Document (``num_return_sequences`` of them per prompt, in a row)."""
    ids, config, stops = _prepare(model, tokenizer, prompts, (config or GenerationConfig()).replace(**overrides))
    out = generate_ids(model, ids, config, tokens_per_image=tokenizer.tokens_per_image, seed=seed, compile=compile,
                       stop=stops)
    docs = tokenizer.decode_batch(out, strict=False)
    return [stops.trim(d) for d in docs] if stops else docs


def stream_documents(model, tokenizer, prompts: Sequence[Document], config: GenerationConfig | None = None, *,
                     seed: Seed = None, compile: bool = False,
                     **overrides) -> Iterator[tuple[int, str | PILImage.Image]]:
    """Yield ``(row, piece)``: text pieces (str) and finished images (PIL) of each output row as they come.

    Rows are numbered as ``generate_documents`` returns them. Joining a row's consecutive pieces gives exactly the
    Text segments of its Document: a piece is only yielded once its characters are final (an incomplete UTF-8
    byte sequence is held back).
    """
    ids, config, stops = _prepare(model, tokenizer, prompts, (config or GenerationConfig()).replace(**overrides))
    rows = expand_rows(ids, seed, config.num_return_sequences)
    session = DecodeSession(model, rows.prompts, config, max_new_tokens=config.max_new_tokens,
                            tokens_per_image=tokenizer.tokens_per_image, seeds=rows.seeds, compile=compile,
                            labels=rows.labels)
    find_stop = (lambda text: stop_end(text, stops.stops)) if stops else None
    decoders = [StreamDecoder(tokenizer, find_stop) for _ in range(session.B)]
    for step in session.iter_steps():
        for b, tok in step:
            if not decoders[b].stopped:
                yield from ((b, piece) for piece in decoders[b].feed(tok))
                if decoders[b].stopped:
                    session.finish([b])
    for b, decoder in enumerate(decoders):
        if not decoder.stopped:
            yield from ((b, piece) for piece in decoder.flush())
