"""The user-facing object: a model, its tokenizers and its sampling defaults, ready to generate documents.

    model = Fusion.from_pretrained("demo_out/checkpoint")
    model.generate("a red circle:", mode="image").to_html("out.html")

As in HF, a list of prompts is a batch (a prompt is a str, a PIL image, a Document or a list of such parts) and
gives a list; one prompt gives one Document (a list when ``num_return_sequences`` > 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image as PILImage

from fusion.document import Document, Image, Text
from fusion.inference.config import GenerationConfig
from fusion.inference.generate import Generation, generate_documents, stream_documents
from fusion.inference.noise import Seed
from fusion.kernels import cpu_tune
from fusion.model.transformer import Transformer
from fusion.run_checkpoints import resolve_checkpoint
from fusion.tokenizers.mixed import MixedTokenizer

log = logging.getLogger(__name__)

Part = str | PILImage.Image | Text | Image
Prompt = Document | Part | Sequence[Part]
Piece = str | PILImage.Image


def as_document(prompt: Prompt) -> Document:
    """A Document, a single str / PIL image, or a list of such parts -> Document."""
    if isinstance(prompt, Document):
        return prompt
    if isinstance(prompt, (str, PILImage.Image, Text, Image)):
        return Document.of(prompt)
    if isinstance(prompt, (list, tuple)):
        return Document.of(*prompt)
    raise TypeError(f"a prompt must be a Document, str, PIL image or a list of those parts, "
                    f"got {type(prompt).__name__}")


def _as_batch(prompt: Prompt | Sequence[Prompt]) -> tuple[list[Document], bool]:
    """(the prompts as Documents, whether the call was a batch): a list is a batch of prompts, as in HF."""
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("an empty list of prompts")
        return [as_document(p) for p in prompt], True
    return [as_document(prompt)], False


class Fusion:
    """``Fusion.from_pretrained(dir).generate("a red circle:", mode="image").to_html("out.html")``."""

    def __init__(self, model: Transformer, tokenizer: MixedTokenizer,
                 generation_config: GenerationConfig | None = None) -> None:
        if model.cfg.vocab != tokenizer.vocab:
            raise ValueError("the tokenizer's vocabulary does not match the model's")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.generation_config = generation_config or GenerationConfig()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, check_finite: bool = True) -> Fusion:
        """A checkpoint folder (``fusion.checkpoint`` names its files) or a training run folder (its newest complete
        checkpoint); device defaults to CUDA when present.

        Its ``generation_config.json`` becomes the defaults of ``generate``; ``check_finite`` refuses weights
        holding NaN / inf (naming the tensors). ``dtype``: the decoder's (default: the checkpoint's, fp32);
        ``"auto"`` decodes in bf16 on CUDA and on a CPU with native bf16 (``cpu_tune.auto_dtype``).
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = cpu_tune.auto_dtype(device)
            log.info("fusion.load: decoding in %s (dtype='auto' on %s)", str(dtype).removeprefix("torch."),
                     torch.device(device).type)
        elif isinstance(dtype, str):
            raise ValueError(f"dtype must be a torch.dtype, None or 'auto', got {dtype!r}")
        path = resolve_checkpoint(path)
        model = Transformer.from_pretrained(path, device=device, dtype=dtype, check_finite=check_finite)
        tokenizer = MixedTokenizer.from_pretrained(path, model.cfg.vocab, device=device, check_finite=check_finite)
        return cls(model, tokenizer, GenerationConfig.from_pretrained(path))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model, both tokenizers and the generation defaults into ``directory`` (each file atomically)."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.generation_config.save_pretrained(directory)
        return Path(directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Fusion:
        """Move the model (device and / or dtype) and the image tokenizer (device; it stays in its dtype)."""
        self.model.to(device=device, dtype=dtype)
        if device is not None:
            self.tokenizer.image.to(device)
        return self

    def generate(self, prompt: Prompt | Sequence[Prompt], generation_config: GenerationConfig | None = None, *,
                 seed: Seed = None, compile: bool = False, record: Generation | None = None,
                 **overrides) -> Document | list[Document]:
        """The continuation of ``prompt`` as a Document; a list of prompts gives a list, generated as one batch.

        ``generation_config`` (default: the checkpoint's) holds the knobs; keywords override its fields, e.g.
        ``mode="image"``, ``guidance_scale=3.0``, ``do_sample=False``, ``num_return_sequences=4``,
        ``speculative=True``. ``seed``: None draws fresh randomness, an int seeds every row's own stream, a list
        gives one seed / Generator per row. ``record`` (a ``Generation``) receives each row's ids and pass counts.
        """
        docs, batch = _as_batch(prompt)
        config = (generation_config or self.generation_config).replace(**overrides)
        out = generate_documents(self.model, self.tokenizer, docs, config, seed=seed, compile=compile, record=record)
        return out if batch or config.num_return_sequences > 1 else out[0]

    def stream(self, prompt: Prompt | Sequence[Prompt], generation_config: GenerationConfig | None = None, *,
               seed: Seed = None, compile: bool = False, record: Generation | None = None,
               **overrides) -> Iterator[Piece] | Iterator[tuple[int, Piece]]:
        """Text pieces and finished images as they come: of one prompt, the pieces; of a batch (or several
        ``num_return_sequences``), ``(row, piece)`` pairs numbered as ``generate`` returns the rows. ``record``
        receives the ids and pass counts once the stream ends."""
        docs, batch = _as_batch(prompt)
        config = (generation_config or self.generation_config).replace(**overrides)
        pairs = stream_documents(self.model, self.tokenizer, docs, config, seed=seed, compile=compile, record=record)
        return pairs if batch or config.num_return_sequences > 1 else (piece for _, piece in pairs)
