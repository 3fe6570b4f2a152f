"""Document <-> ids: text pieces and image codes in one stream.

One document is ``bos, <text pieces>, boi, <N image codes>, eoi, ..., eos`` where N is the image tokenizer's
``tokens_per_image``. Images of a batch go through the VQ encoder together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image as PILImage

from fusion.document import Document, Image, Text
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

    def image_span_length(self) -> int:
        """Ids one image takes in the stream: boi + codes + eoi."""
        return self.tokens_per_image + 2

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
        """Per-token bool: True for image codes (the modality mask used to split the loss)."""
        return self.vocab.image_id_mask(ids)

    # ---------------------------------------------------------------- decode

    def decode(self, ids: torch.Tensor | Sequence[int], *, strict: bool = True) -> Document:
        """ids -> Document. bos/eos/pad are dropped; ``boi, N codes, eoi`` becomes a PIL image.

        ``strict=False`` (for generated output) keeps a truncated trailing image out of the document
        instead of raising; a malformed span in the middle always raises.
        """
        return self.decode_batch([ids], strict=strict)[0]

    def decode_batch(self, batch: Sequence[torch.Tensor | Sequence[int]], *, strict: bool = True) -> list[Document]:
        plans = [self._split(torch.as_tensor(ids, dtype=torch.long).cpu(), strict) for ids in batch]
        spans = [s for plan in plans for kind, s in plan if kind == "image"]
        pics = self.image.decode_images(torch.stack(spans)) if spans else []
        docs, k = [], 0
        for plan in plans:
            segs = []
            for kind, s in plan:
                if kind == "text":
                    segs.append(Text(self.text.decode(self.vocab.text_pieces(s).tolist())))
                else:
                    segs.append(Image(pics[k]))
                    k += 1
            docs.append(Document(segs))
        return docs

    def _split(self, ids: torch.Tensor, strict: bool) -> list[tuple[str, torch.Tensor]]:
        """Cut a 1-D id stream into ("text", pieces-as-ids) and ("image", codes) parts."""
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D id sequence, got shape {tuple(ids.shape)}")
        v, n = self.vocab, self.tokens_per_image
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v.size):
            raise ValueError(f"ids out of the vocabulary [0, {v.size})")
        plan, text, i = [], [], 0
        skip = {v.bos_id, v.eos_id, v.pad_id}
        while i < len(ids):
            t = int(ids[i])
            if t == v.boi_id:
                end = i + 1 + n
                if end >= len(ids):  # no room for eoi: the stream stops inside this image
                    if strict:
                        raise ValueError(f"image span at position {i} is cut off: {n} codes and eoi expected")
                    break
                span = ids[i + 1:end]
                if int(ids[end]) != v.eoi_id or not bool(v.image_id_mask(span).all()):
                    raise ValueError(f"malformed image span at position {i}: expected boi, {n} image codes, eoi")
                if text:
                    plan.append(("text", torch.tensor(text)))
                    text = []
                plan.append(("image", v.image_codes(span)))
                i += n + 2
                continue
            if t in skip:
                pass
            elif t == v.eoi_id or v.is_image_id(t):
                raise ValueError(f"image id {t} outside an image span at position {i}")
            else:
                text.append(t)
            i += 1
        if text:
            plan.append(("text", torch.tensor(text)))
        return plan
