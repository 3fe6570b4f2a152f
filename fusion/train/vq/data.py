"""Images to train the VQ tokenizer on: a corpus (any ``CorpusSpec``: its images), PIL images, a HF ``datasets``
column, or the synthetic world.

A corpus is streamed: each image is decoded, shrunk to the tokenizer's resolution by its resize policy and kept
as uint8 pixels at once, so memory grows with the number of images times R x R, never with their original size;
images that cannot be used are skipped and counted (``CorpusImages.report``). The synthetic world also gives
each image's scene, for the oracle's accuracy.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fusion.data.opener import ImageOpener, corpus_images
from fusion.data.report import IngestReport
from fusion.data.spec import SYNTHETIC, CorpusSpec
from fusion.data.synthetic import SyntheticWorld, render
from fusion.tokenizers.image import ImageTokenizer
from fusion.train.vq.config import VQTrainConfig

log = logging.getLogger(__name__)

SYNTHETIC_EVAL_OFFSET = 1_000_000  # held-out synthetic scenes come from a seed stream training never reads


@dataclass
class CorpusImages:
    """A corpus as the VQ trainer's image source; ``report`` counts what reading it skipped and why."""

    spec: CorpusSpec
    report: IngestReport = field(default_factory=IngestReport)


def load_images(source, limit: int | None = None, *, column: str | None = None) -> list[PILImage.Image]:
    """PIL images from an iterable of PIL images or a HF ``datasets`` Dataset (its image column)."""
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


def corpus_pixels(corpus: CorpusImages, tokenizer: ImageTokenizer, *, progress: bool = True) -> torch.Tensor:
    """Every usable image of the corpus as uint8 [N, 3, R, R], streamed; an error when none is usable."""
    if corpus.spec.weighted:
        log.info("mixture weights shape the decoder's training data; the VQ tokenizer reads every image once")
    opener = ImageOpener(corpus.spec, tokenizer, progress=progress)
    with logging_redirect_tqdm():
        images = tqdm(corpus_images(corpus.spec, opener, corpus.report), desc="train-vq: reading", unit="image",
                      disable=not progress)
        pixels = [np.asarray(im, dtype=np.uint8) for im in images]
    log.info("%s", corpus.report.summary("VQ training images"))
    if not pixels:
        raise ValueError("the corpus has no usable image:\n" + corpus.report.summary("images"))
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


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


def _as_source(source):
    """Corpus names (a spec, a path, spec strings) -> CorpusImages, a lone synthetic source -> SyntheticWorld."""
    if isinstance(source, (str, os.PathLike)) or (isinstance(source, Sequence) and source
                                                  and all(isinstance(s, (str, os.PathLike)) for s in source)):
        source = CorpusSpec.parse(source)
    if isinstance(source, CorpusSpec):
        source = CorpusImages(source)
    if isinstance(source, CorpusImages) and [s.format for s in source.spec.sources] == [SYNTHETIC]:
        return SyntheticWorld(seed=source.spec.sources[0].seed), source.spec.sources[0].n
    return source, None


def build_sets(cfg: VQTrainConfig, tokenizer: ImageTokenizer, source) -> tuple[ImageSet, ImageSet]:
    """(train, held-out) image sets from a corpus, PIL images, a HF Dataset or the synthetic world."""
    source, n = _as_source(source)
    if isinstance(source, SyntheticWorld):
        r = tokenizer.resolution
        train = source.scenes(n or cfg.train_images)
        held = source.scenes(cfg.eval_images, seed_offset=SYNTHETIC_EVAL_OFFSET)
        return (ImageSet.build(tokenizer, [render(s, r) for s in train], train),
                ImageSet.build(tokenizer, [render(s, r) for s in held], held))
    if isinstance(source, CorpusImages):
        pixels = corpus_pixels(source, tokenizer, progress=cfg.progress)
    else:
        pixels = ImageSet.build(tokenizer, load_images(source)).pixels
    if len(pixels) < 2:
        raise ValueError("need at least 2 images (one to train on, one held out)")
    n_eval = min(cfg.eval_images, max(1, len(pixels) // 10))
    order = list(range(len(pixels)))
    random.Random(cfg.seed).shuffle(order)
    return ImageSet(pixels[order[n_eval:]]), ImageSet(pixels[order[:n_eval]])
