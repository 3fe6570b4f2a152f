"""The demo's scores, read back by the synthetic world's oracle: caption -> image at each guidance scale (chosen on
validation prompts, reported on held-out ones), image -> caption, and a few interleaved stories for the page."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fusion.api import Fusion
from fusion.data.synthetic import Scene, SyntheticWorld, read_caption, read_image, render
from fusion.document import Document
from fusion.inference.generate import Generation

TEST_OFFSET, VALIDATION_OFFSET, STORY_OFFSET = 10_007, 20_011, 30_013  # seed streams the training never reads


@dataclass
class Scores:
    """What the page shows and the report keeps."""

    text_to_image: dict[float, dict[str, float]]  # scale -> {"validation": accuracy, "test": accuracy}
    best_scale: float
    test_scenes: list[Scene]
    test_images: list[Document]          # generated at the best scale, one per test scene
    image_hits: list[bool]
    pictures: list                       # the test scenes rendered (PIL), captioned by the model
    captions: list[str]                  # generated for them
    caption_hits: list[bool]
    stories: list[Document] = field(default_factory=list)
    decoding: list[dict] = field(default_factory=list)  # plain vs speculative on the held-out captions

    @property
    def image_to_caption(self) -> float:
        return sum(self.caption_hits) / len(self.caption_hits)


def same(reading, scene: Scene) -> bool:
    """The oracle's verdict: colour and shape read back as the scene has them."""
    return reading is not None and (reading.colour, reading.shape) == (scene.colour, scene.shape)


def _images(model: Fusion, scenes: list[Scene], scale: float, cfg, first: int = 0,
            **kw) -> tuple[list[Document], list[bool]]:
    """One image per caption at guidance ``scale``; a seed per prompt (by its index, from ``first``) keeps the
    samples independent, and the same whatever the batch."""
    prompts = [Document.of(s.caption() + ":") for s in scenes]
    seeds = [cfg.seed * 100_003 + first + i for i in range(len(prompts))]
    docs = model.generate(prompts, mode="image", seed=seeds, temperature=cfg.image_temperature, guidance_scale=scale,
                          **kw)
    return docs, [same(read_image(d.images[0]) if d.images else None, s) for d, s in zip(docs, scenes, strict=True)]


def compare_decoding(model: Fusion, scenes: list[Scene], scale: float, cfg) -> list[dict]:
    """Plain vs speculative decoding of the same captions and seeds: passes per image, seconds for them all in one
    batch (as scored), ms per image one at a time (the first ``cfg.single_prompts``, the two taking turns so that
    the machine's drifts hit both alike), the oracle's accuracy."""
    kinds = {"plain": False, "speculative": True}
    rows = {}
    for name, speculative in kinds.items():
        record = Generation()
        t = time.perf_counter()
        _, hits = _images(model, scenes, scale, cfg, speculative=speculative, record=record)
        rows[name] = {"decoding": name, "passes_per_image": record.passes_per_image,
                      "batch_seconds": time.perf_counter() - t, "single_ms_per_image": 0.0,
                      "accuracy": sum(hits) / len(hits)}
    for i in range(cfg.single_prompts):
        for name, speculative in kinds.items():
            t = time.perf_counter()
            _images(model, scenes[i:i + 1], scale, cfg, first=i, speculative=speculative)
            rows[name]["single_ms_per_image"] += 1e3 * (time.perf_counter() - t) / cfg.single_prompts
    return list(rows.values())


def _captions(model: Fusion, scenes: list[Scene], image_size: int) -> tuple[list, list[str], list[bool]]:
    pictures = [render(s, image_size) for s in scenes]
    docs = model.generate([Document.of(p) for p in pictures], mode="text", max_new_tokens=12, do_sample=False,
                          stop_strings=["."])
    texts = ["".join(d.texts) for d in docs]
    return pictures, texts, [same(read_caption(t), s) for t, s in zip(texts, scenes, strict=True)]


def _stories(model: Fusion, world: SyntheticWorld, cfg, scale: float) -> list[Document]:
    """Story openings continued in mixed mode: text and images interleaved, the images guided."""
    openings = [Document.of(f"Once there was {s.caption()}. ") for s in world.scenes(cfg.stories,
                                                                                        seed_offset=STORY_OFFSET)]
    out = model.generate(openings, mode="mixed", max_new_tokens=220, seed=list(range(len(openings))),
                         temperature=cfg.image_temperature, guidance_scale=scale, stop_strings=["The end."])
    return [Document(o.segments + d.segments) for o, d in zip(openings, out, strict=True)]


def score(model: Fusion, world: SyntheticWorld, cfg) -> Scores:
    """Every scale on validation and test prompts; the best validation scale (ties: the smaller) is reported."""
    validation = world.scenes(cfg.val_prompts, seed_offset=VALIDATION_OFFSET)
    test = world.scenes(cfg.eval_prompts, seed_offset=TEST_OFFSET)
    curve, by_scale = {}, {}
    for scale in cfg.guidance_scales:
        _, val_hits = _images(model, validation, scale, cfg)
        by_scale[scale] = _images(model, test, scale, cfg)
        curve[scale] = {"validation": sum(val_hits) / len(val_hits),
                        "test": sum(by_scale[scale][1]) / len(by_scale[scale][1])}
    best = max(cfg.guidance_scales, key=lambda s: (curve[s]["validation"], -s))
    return Scores(curve, best, test, *by_scale[best], *_captions(model, test, world.image_size),
                  _stories(model, world, cfg, best), compare_decoding(model, test, best, cfg))
