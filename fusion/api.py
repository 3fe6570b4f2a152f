"""The user-facing object: a model and its tokenizers, ready to generate documents.

    fusion generate --checkpoint DIR --prompt "a red circle:" [--image x.png] [--mode image] --out out.html
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image as PILImage

from fusion.document import Document, Image, Text
from fusion.images import open_image
from fusion.inference.generate import MODES, generate_documents, stream_document
from fusion.tokenizers.mixed import MixedTokenizer

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
    """``Fusion.load(dir).generate(["a red circle:"], mode="image").to_html("out.html")``."""

    def __init__(self, model: torch.nn.Module, tokenizer: MixedTokenizer) -> None:
        if model.cfg.vocab != tokenizer.vocab:
            raise ValueError("the tokenizer's vocabulary does not match the model's")
        self.model, self.tokenizer = model.eval(), tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> Fusion:
        """A checkpoint folder (``fusion.checkpoint``); device defaults to CUDA when present."""
        from fusion.checkpoint import load_checkpoint

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(*load_checkpoint(path, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompt: Prompt | Sequence[Prompt], *, max_new_tokens: int | None = None,
                 mode: str = "mixed", cfg_scale: float = 1.0, cfg_image_scale: float | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: Sequence[str] | str = (), compile: bool = False) -> Document | list[Document]:
        """The continuation of ``prompt`` as a Document; a list of prompts gives a list, generated as one batch.

        mode: "text", "image" (one image at once) or "mixed". ``max_new_tokens`` defaults to one image in
        mode "image", else 256 (capped by the context). ``cfg_scale`` guides image tokens (1 = off);
        ``cfg_image_scale`` turns on Chameleon's 3-way guidance. temperature 0 is greedy.
        """
        batch = _is_batch(prompt)
        docs = [as_document(p) for p in prompt] if batch else [as_document(prompt)]
        out = generate_documents(self.model, self.tokenizer, docs, max_new_tokens=max_new_tokens, mode=mode,
                                 stop=stop, cfg_scale=cfg_scale, cfg_image_scale=cfg_image_scale,
                                 temperature=temperature, top_k=top_k, top_p=top_p,
                                 repetition_penalty=repetition_penalty, seed=seed, compile=compile)
        return out if batch else out[0]

    def stream(self, prompt: Prompt, **kwargs) -> Iterator[str | PILImage.Image]:
        """Yield text pieces and finished images of one prompt as they come (keywords as ``generate``)."""
        return stream_document(self.model, self.tokenizer, as_document(prompt), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``fusion generate``: one prompt (text and / or images) -> an HTML page."""
    ap = argparse.ArgumentParser(prog="fusion generate", description=main.__doc__)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder")
    ap.add_argument("--prompt", default="", help="prompt text (comes after the images)")
    ap.add_argument("--image", action="append", default=[], help="prompt image file (repeatable)")
    ap.add_argument("--mode", choices=MODES, default="mixed")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA)")
    ap.add_argument("--out", default="out.html", help="HTML file to write")
    args = ap.parse_args(argv)
    parts = [open_image(p) for p in args.image] + ([args.prompt] if args.prompt else [])
    if not parts:
        ap.error("give --prompt and / or --image")
    model = Fusion.load(args.checkpoint, device=args.device)
    prompt = Document.of(*parts)
    doc = model.generate(prompt, max_new_tokens=args.max_new_tokens, mode=args.mode, cfg_scale=args.cfg_scale,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         stop=args.stop, compile=args.compile)
    Document(prompt.segments + doc.segments).to_html(args.out, title=f"fusion generate: {args.prompt[:60]}")
    print(f"{Path(args.out)}: {len(doc.texts)} text and {len(doc.images)} image segments")
    return 0
