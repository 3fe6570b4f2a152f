"""The user-facing object: a model and its tokenizers, ready to generate documents.

    model = Fusion.from_pretrained("demo_out/checkpoint")
    model.generate(["a red circle:"], mode="image").to_html("out.html")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image as PILImage

from fusion.checkpoint import resolve_checkpoint
from fusion.document import Document, Image, Text
from fusion.inference.config import GenerationConfig
from fusion.inference.generate import generate_documents, stream_document
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.train.export import load_decoder

Part = str | PILImage.Image | Text | Image
Prompt = Document | Part | Sequence[Part]


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


def _is_batch(prompt) -> bool:
    """A list whose items are whole prompts (Documents or part lists) rather than parts of one prompt."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(p, (Document, list, tuple)) for p in prompt)


class Fusion:
    """``Fusion.from_pretrained(dir).generate(["a red circle:"], mode="image").to_html("out.html")``."""

    def __init__(self, model: torch.nn.Module, tokenizer: MixedTokenizer) -> None:
        if model.cfg.vocab != tokenizer.vocab:
            raise ValueError("the tokenizer's vocabulary does not match the model's")
        self.model, self.tokenizer = model.eval(), tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> Fusion:
        """A checkpoint folder (``fusion.checkpoint`` names its files) or a training run folder (its newest complete
        checkpoint); device defaults to CUDA when present."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_checkpoint(path)
        model = load_decoder(path, device=device, dtype=dtype)
        return cls(model, MixedTokenizer.from_pretrained(path, model.cfg.vocab, device=device))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model and both tokenizers into ``directory`` (each file atomically)."""
        self.model.save_pretrained(directory)
        return self.tokenizer.save_pretrained(directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompt: Prompt | Sequence[Prompt], generation_config: GenerationConfig | None = None, *,
                 seed: int = 0, compile: bool = False, **overrides) -> Document | list[Document]:
        """The continuation of ``prompt`` as a Document; a list of prompts gives a list, generated as one batch.

        ``generation_config`` (default ``GenerationConfig()``) holds the knobs; keywords override its fields,
        e.g. ``mode="image"``, ``guidance_scale=3.0``, ``temperature=0``, ``stop_strings=["."]``.
        """
        batch = _is_batch(prompt)
        docs = [as_document(p) for p in prompt] if batch else [as_document(prompt)]
        out = generate_documents(self.model, self.tokenizer, docs, generation_config, seed=seed, compile=compile,
                                 **overrides)
        return out if batch else out[0]

    def stream(self, prompt: Prompt, generation_config: GenerationConfig | None = None, *, seed: int = 0,
               compile: bool = False, **overrides) -> Iterator[str | PILImage.Image]:
        """Yield text pieces and finished images of one prompt as they come (arguments as ``generate``)."""
        return stream_document(self.model, self.tokenizer, as_document(prompt), generation_config, seed=seed,
                               compile=compile, **overrides)
