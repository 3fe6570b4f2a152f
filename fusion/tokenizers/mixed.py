"""Document <-> ids: text pieces and image codes in one stream.

One document is ``bos, <text pieces>, boi, <N image codes>, eoi, ..., eos`` where N is the image tokenizer's
``tokens_per_image``. Images of a batch go through the VQ encoder together.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image as PILImage

from fusion import checkpoint_layout as layout
from fusion.document import Document, Image, Text
from fusion.files import first_present
from fusion.tokenizers.grammar import BOI, CODE, EOI, IMAGE_KIND, TEXT, TEXT_KIND, ImageSpans, split
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.text import HFTextTokenizer, TextTokenizer
from fusion.vocab import Vocab


class TextCodec(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class ImageCodec(Protocol):
    tokens_per_image: int
    codebook_size: int

    def encode(self, images: Sequence[PILImage.Image]) -> torch.Tensor: ...
    def decode_images(self, codes: torch.Tensor) -> list[PILImage.Image]: ...


class MixedTokenizer:
    """Text BPE + VQ image tokenizer + the unified Vocab that joins them."""

    def __init__(self, text: TextCodec, image: ImageCodec, vocab: Vocab | None = None) -> None:
        self.text, self.image = text, image
        self.vocab = vocab or Vocab.build(text.vocab_size, image.codebook_size)
        if self.vocab.image_count != image.codebook_size:
            raise ValueError(f"vocab has {self.vocab.image_count} image ids but the image tokenizer has "
                             f"{image.codebook_size} codes")
        if self.vocab.text_count < text.vocab_size:
            raise ValueError(f"vocab has {self.vocab.text_count} text ids but the text tokenizer has "
                             f"{text.vocab_size} pieces")

    @property
    def tokens_per_image(self) -> int:
        return self.image.tokens_per_image

    # ---------------------------------------------------------------- encode

    def encode(self, doc: Document, *, bos: bool = True, eos: bool = True) -> torch.Tensor:
        """One document -> LongTensor[T]."""
        return self.encode_batch([doc], bos=bos, eos=eos)[0]

    def encode_batch(self, docs: Sequence[Document], *, bos: bool = True, eos: bool = True) -> list[torch.Tensor]:
        """Documents -> one LongTensor each; all images go through the VQ encoder in one batch."""
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document):
                raise TypeError(f"document {i} is a {type(doc).__name__}, not a fusion Document")
            if doc.is_empty():
                raise ValueError(f"document {i} is empty")
        images = [im for doc in docs for im in doc.images]
        codes = self.image.encode(images) if images else torch.empty(0, self.tokens_per_image, dtype=torch.long)
        image_ids = self.vocab.image_ids(codes.cpu().long())
        v, out, k = self.vocab, [], 0
        for doc in docs:
            parts = [torch.tensor([v.bos_id])] if bos else []
            for seg in doc.segments:
                if isinstance(seg, Text):
                    if seg.text:
                        parts.append(self.vocab.text_ids(torch.tensor(self.text.encode(seg.text), dtype=torch.long)))
                else:
                    parts += [torch.tensor([v.boi_id]), image_ids[k], torch.tensor([v.eoi_id])]
                    k += 1
            if eos:
                parts.append(torch.tensor([v.eos_id]))
            out.append(torch.cat(parts) if parts else torch.empty(0, dtype=torch.long))
        return out

    def image_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Deprecated (one release): ``vocab.image_id_mask(ids)``, per token; ``Vocab.image_mask`` is per id."""
        warnings.warn("MixedTokenizer.image_mask(ids) is deprecated: use tokenizer.vocab.image_id_mask(ids) (a "
                      "per-token mask; Vocab.image_mask() is the per-vocabulary one)", DeprecationWarning,
                      stacklevel=2)
        return self.vocab.image_id_mask(ids)

    # ---------------------------------------------------------------- decode

    def decode(self, ids: torch.Tensor | Sequence[int], *, strict: bool = True) -> Document:
        """ids -> Document. bos/eos/pad are dropped; ``boi, N codes, eoi`` becomes a PIL image.

        ``strict=False`` (for generated output) keeps a truncated trailing image out of the document
        instead of raising; a malformed span in the middle always raises.
        """
        return self.decode_batch([ids], strict=strict)[0]

    def decode_batch(self, batch: Sequence[torch.Tensor | Sequence[int]], *, strict: bool = True) -> list[Document]:
        plans = [self._plan(torch.as_tensor(ids, dtype=torch.long).cpu(), strict) for ids in batch]
        spans = [codes for plan in plans for kind, codes in plan if kind == IMAGE_KIND]
        pics = iter(self.image.decode_images(torch.stack(spans)) if spans else [])
        return [Document([Text(self.decode_text(x)) if kind == TEXT_KIND else Image(next(pics)) for kind, x in plan])
                for plan in plans]

    def decode_text(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text ids (vocabulary ids of text pieces) -> str."""
        return self.text.decode(self.vocab.text_pieces(torch.as_tensor(ids, dtype=torch.long)).tolist())

    def _plan(self, ids: torch.Tensor, strict: bool) -> list[tuple[str, torch.Tensor]]:
        """(TEXT_KIND, text ids) and (IMAGE_KIND, codes) parts; text runs split only by control ids are joined."""
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D id sequence, got shape {tuple(ids.shape)}")
        plan: list[tuple[str, torch.Tensor]] = []
        for run in split(ids.tolist(), self.vocab, self.tokens_per_image):
            part = ids[run.start:run.end]
            if not run.closed:
                if strict:
                    raise ValueError(f"image span at position {run.boi} is cut off: "
                                     f"{self.tokens_per_image} codes and eoi expected")
                break
            if run.kind == TEXT_KIND and plan and plan[-1][0] == TEXT_KIND:
                plan[-1] = (TEXT_KIND, torch.cat([plan[-1][1], part]))
            else:
                plan.append((run.kind, part if run.kind == TEXT_KIND else self.vocab.image_codes(part)))
        return plan

    # ---------------------------------------------------------------- files

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Both tokenizers into ``directory`` (the vocabulary layout is the model's, in its config)."""
        directory = Path(directory)
        self.text.save_pretrained(directory)
        self.image.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, vocab: Vocab | None = None,
                        device: str | torch.device | None = None, *, check_finite: bool = True) -> MixedTokenizer:
        """``text.model`` (or HF's ``tokenizer.json``) and the image tokenizer of a checkpoint folder."""
        text_file = first_present(directory, layout.TEXT_MODEL, layout.HF_TEXT_TOKENIZER, what="text tokenizer")
        text = (TextTokenizer.from_pretrained(text_file) if text_file.name == layout.TEXT_MODEL
                else HFTextTokenizer(text_file))
        return cls(text, ImageTokenizer.from_pretrained(directory, device=device, check_finite=check_finite), vocab)


@dataclass(frozen=True)
class ImageCodes:
    """A finished image of a stream as its codebook indices [N]; ``MixedTokenizer.image`` decodes it to pixels."""

    codes: torch.Tensor


class StreamDecoder:
    """Generated ids one at a time -> text pieces (once their characters are final) and finished images (codes).

    Joining the pieces gives exactly the Text segments of ``MixedTokenizer.decode`` of the same ids. With
    ``find_stop`` (text -> end index of a stop string, or None) the text ends right after the first stop, and
    ``stopped`` turns True. ``ids`` holds every id fed, up to the one that completed a stop string.
    """

    def __init__(self, tokenizer: MixedTokenizer, find_stop: Callable[[str], int | None] | None = None) -> None:
        self.tokenizer, self.find_stop = tokenizer, find_stop
        self.spans = ImageSpans(tokenizer.vocab, tokenizer.tokens_per_image)
        self.ids: list[int] = []
        self.text_ids: list[int] = []  # the current text run (since the last image)
        self.codes: list[int] = []
        self.emitted = ""  # how much of the current run's text has been yielded
        self.stopped = False

    def feed(self, t: int) -> list[str | ImageCodes]:
        what = self.spans.feed(t)
        self.ids.append(t)
        if what == TEXT:
            self.text_ids.append(t)
            text = self.tokenizer.decode_text(self.text_ids)
            end = self.find_stop(text) if self.find_stop else None
            if end is not None:
                self.stopped = True
                return self._emit(text[:end])
            return self._emit(text.rstrip("\ufffd"))  # hold back an incomplete UTF-8 sequence
        if what == BOI:
            out = self.flush()
            self.text_ids, self.emitted = [], ""
            return out
        if what == CODE:
            self.codes.append(t)
        elif what == EOI:
            codes, self.codes = self.tokenizer.vocab.image_codes(torch.tensor(self.codes)), []
            return [ImageCodes(codes)]
        return []

    def flush(self) -> list[str]:
        """What is left of the current text run, yielded now."""
        return self._emit(self.tokenizer.decode_text(self.text_ids))

    def _emit(self, text: str) -> list[str]:
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return []
        piece, self.emitted = text[len(self.emitted):], text
        return [piece]
