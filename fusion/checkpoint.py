"""The checkpoint folder: model, text tokenizer and image tokenizer side by side.

``config.json, model.safetensors`` (the decoder), ``text.model`` (sentencepiece) and ``vq.safetensors,
vq.json`` (the image tokenizer). Every file is written atomically, so a crash mid-save leaves the previous
version of each file intact. A folder converted from HF Chameleon holds ``tokenizer.json`` instead of
``text.model`` and an encoder-only VQ (``hf_vqmodel.safetensors``); ``load_checkpoint`` reads both kinds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fusion.model.transformer import Transformer
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import HFTextTokenizer, TextTokenizer

TEXT_MODEL = "text.model"
HF_TEXT_TOKENIZER = "tokenizer.json"  # what `fusion convert` copies from an HF Chameleon folder


def save_checkpoint(directory: str | os.PathLike, model: Transformer, tokenizer: MixedTokenizer) -> Path:
    """Write model + tokenizers into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not isinstance(tokenizer.text, TextTokenizer):
        raise TypeError("save_checkpoint writes sentencepiece text tokenizers only")
    model.save_pretrained(directory)
    tokenizer.text.save(directory / TEXT_MODEL)
    tokenizer.image.save_pretrained(directory)
    return directory


def load_checkpoint(directory: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> tuple[Transformer, MixedTokenizer]:
    """Read a checkpoint folder written by ``save_checkpoint`` (or ``fusion convert``)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a fusion checkpoint: config.json is missing")
    model = Transformer.from_pretrained(directory, device=device, dtype=dtype)
    if (directory / TEXT_MODEL).is_file():
        text = TextTokenizer.load(directory / TEXT_MODEL)
    elif (directory / HF_TEXT_TOKENIZER).is_file():
        text = HFTextTokenizer(directory / HF_TEXT_TOKENIZER)
    else:
        raise FileNotFoundError(f"{directory}: no text tokenizer ({TEXT_MODEL} or {HF_TEXT_TOKENIZER})")
    image = ImageTokenizer.from_pretrained(directory).to(device or "cpu")
    return model, MixedTokenizer(text, image, model.cfg.vocab)
