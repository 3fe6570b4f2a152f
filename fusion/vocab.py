"""The unified id space: specials, text pieces and image codes in one vocabulary.

fusion's own layout is ``[specials][text pieces][image codes]``. Checkpoints
with another layout (Chameleon keeps its 8192 image codes at ids 4..8195 inside
a 65,536-id BPE vocabulary) are described by the same object with other
offsets, so every translation below is one add or subtract on a tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>")
IGNORE_INDEX = -100  # a target that is not scored (the loss, the fused cross-entropy, packing); PyTorch's default


@dataclass(frozen=True)
class Vocab:
    """Where each kind of id lives. Text ids are ``text_start + piece``; image ids ``image_start + code``."""

    size: int
    text_start: int
    text_count: int
    image_start: int
    image_count: int
    pad_id: int
    bos_id: int
    eos_id: int
    boi_id: int
    eoi_id: int

    def __post_init__(self) -> None:
        if self.image_start < 0 or self.image_start + self.image_count > self.size:
            raise ValueError(f"image range [{self.image_start}, {self.image_start + self.image_count}) "
                             f"does not fit a vocabulary of {self.size}")
        if self.text_start < 0 or self.text_start + self.text_count > self.size:
            raise ValueError(f"text range [{self.text_start}, {self.text_start + self.text_count}) "
                             f"does not fit a vocabulary of {self.size}")
        for name in ("pad_id", "bos_id", "eos_id", "boi_id", "eoi_id"):
            if self.is_image_id(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} lies inside the image range")

    @classmethod
    def build(cls, text_size: int, image_size: int) -> Vocab:
        """fusion's layout: the five specials, then ``text_size`` pieces, then ``image_size`` codes."""
        if text_size <= 0 or image_size <= 0:
            raise ValueError(f"text_size and image_size must be positive, got {text_size}, {image_size}")
        n = len(SPECIAL_TOKENS)
        return cls(size=n + text_size + image_size, text_start=n, text_count=text_size,
                   image_start=n + text_size, image_count=image_size,
                   **{f"{name.strip('<>')}_id": i for i, name in enumerate(SPECIAL_TOKENS)})

    # --------------------------------------------------------- translations

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.bos_id, self.eos_id, self.boi_id, self.eoi_id)

    def is_image_id(self, i: int) -> bool:
        return self.image_start <= i < self.image_start + self.image_count

    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook indices -> vocabulary ids."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.image_count):
            raise ValueError(f"image codes must lie in [0, {self.image_count}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return codes + self.image_start

    def image_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids -> codebook indices (every id must be an image id)."""
        if ids.numel() and not bool(self.image_id_mask(ids).all()):
            raise ValueError("image_codes got ids outside the image range "
                             f"[{self.image_start}, {self.image_start + self.image_count})")
        return ids - self.image_start

    def text_ids(self, pieces: torch.Tensor) -> torch.Tensor:
        """Text-tokenizer piece ids -> vocabulary ids."""
        return pieces + self.text_start

    def text_pieces(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids -> text-tokenizer piece ids."""
        return ids - self.text_start

    def image_id_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-id bool: is this an image code?"""
        return (ids >= self.image_start) & (ids < self.image_start + self.image_count)

    # ------------------------------------------------------ sampling masks

    def image_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [size]: ids allowed inside an image span (the codes only)."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        mask[self.image_start:self.image_start + self.image_count] = True
        return mask

    def text_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [size]: ids allowed in text mode: text pieces and eos (boi is the caller's choice)."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        mask[self.text_start:self.text_start + self.text_count] = True
        mask[self.image_start:self.image_start + self.image_count] = False
        for i in self.special_ids:
            mask[i] = False
        mask[self.eos_id] = True
        return mask

    # ------------------------------------------------------------------ I/O

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(**{k: int(v) for k, v in d.items()})
