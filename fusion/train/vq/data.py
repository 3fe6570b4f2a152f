"""Images to train the VQ tokenizer on: from PIL images, a folder, a HF ``datasets`` column or the synthetic world.

They are preprocessed once into a uint8 tensor (fine for the sets this trains on; a streaming loader is future
work). The synthetic world also gives each image's scene, for the oracle's accuracy.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image as PILImage

from fusion.data.synthetic import SyntheticWorld, render
from fusion.images import open_image
from fusion.tokenizers.image import ImageTokenizer
from fusion.train.vq.config import VQTrainConfig

SYNTHETIC_EVAL_OFFSET = 1_000_000  # held-out synthetic scenes come from a seed stream training never reads
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_images(source, limit: int | None = None, *, column: str | None = None) -> list[PILImage.Image]:
    """PIL images from an iterable of PIL images, a folder of image files, or a HF ``datasets`` Dataset."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"image source {folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        return [open_image(p) for p in paths[:limit]]
    if hasattr(source, "features") and hasattr(source, "select"):  # a HF datasets.Dataset
        source = source[image_column(source, column)]
    images = []
    for i, image in enumerate(source):
        if limit is not None and i >= limit:
            break
        if not isinstance(image, PILImage.Image):
            raise TypeError(f"item {i} of the image source is a {type(image).__name__}, expected a PIL image")
        images.append(image)
    if not images:
        raise ValueError("the image source is empty")
    return images


def image_column(dataset, column: str | None) -> str:
    from datasets import Image as ImageFeature

    if column is not None:
        if column not in dataset.features:
            raise ValueError(f"dataset has no column {column!r}; columns are {list(dataset.features)}")
        return column
    found = [name for name, feat in dataset.features.items() if isinstance(feat, ImageFeature)]
    if len(found) != 1:
        raise ValueError(f"cannot pick the image column among {found or list(dataset.features)}; pass column=")
    return found[0]


@dataclass
class ImageSet:
    """Preprocessed pixels (uint8, [N, 3, R, R]) and, for the synthetic world, each image's scene."""

    pixels: torch.Tensor
    scenes: list | None = None

    @classmethod
    def build(cls, tokenizer: ImageTokenizer, images: list[PILImage.Image], scenes: list | None = None) -> ImageSet:
        x = torch.cat([tokenizer.preprocess(images[i:i + 256]) for i in range(0, len(images), 256)])
        return cls(((x + 1) * 127.5).round().to(torch.uint8), scenes)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.pixels[idx].float() / 127.5 - 1.0


def build_sets(cfg: VQTrainConfig, tokenizer: ImageTokenizer, source) -> tuple[ImageSet, ImageSet]:
    """(train, held-out) image sets from any supported source."""
    if isinstance(source, str) and source.startswith("synthetic"):
        source = SyntheticWorld(seed=int(source.partition(":")[2] or cfg.seed))
    if isinstance(source, SyntheticWorld):
        r = tokenizer.resolution
        train = source.scenes(cfg.train_images)
        held = source.scenes(cfg.eval_images, seed_offset=SYNTHETIC_EVAL_OFFSET)
        return (ImageSet.build(tokenizer, [render(s, r) for s in train], train),
                ImageSet.build(tokenizer, [render(s, r) for s in held], held))
    images = load_images(source)
    if len(images) < 2:
        raise ValueError("need at least 2 images (one to train on, one held out)")
    n_eval = min(cfg.eval_images, max(1, len(images) // 10))
    random.Random(cfg.seed).shuffle(images)
    return ImageSet.build(tokenizer, images[n_eval:]), ImageSet.build(tokenizer, images[:n_eval])
