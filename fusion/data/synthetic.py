"""The embedded default world: coloured shapes, their captions, interleaved stories, and an oracle.

Because the generator knows the truth, ``read_image`` can score any image a model produces (colour, shape,
size) and ``read_caption`` any caption. Everything is seeded and procedural: no files, no network.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from fusion.document import Document, Image, Text
from fusion.images import to_rgb

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (6.0, 8.0), "large": (10.5, 13.0)}  # half-extent range in pixels at 32x32
BACKGROUND = (255, 255, 255)
_SUPERSAMPLE = 4  # draw at 4x and downsample, so edges are anti-aliased like natural images


@dataclass(frozen=True)
class Scene:
    """One shape on a white canvas; centre and half-extent in units of the image side."""

    colour: str
    shape: str
    size: str
    cx: float = 0.5
    cy: float = 0.5
    half: float = 0.3

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


def _polygon(shape: str, cx: float, cy: float, rx: float, ry: float) -> list[tuple[float, float]]:
    """The outline of ``shape`` centred at (cx, cy), half-extents ``rx`` across and ``ry`` down."""
    if shape == "square":
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        unit = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "cross":
        t = 1 / 3
        unit = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
                (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")
    return [(cx + x * rx, cy + y * ry) for x, y in unit]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, rx, ry), fill=fill)


def render(scene: Scene, size: int = 32) -> PILImage.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size``."""
    if scene.colour not in COLOURS:
        raise ValueError(f"unknown colour {scene.colour!r}; colours are {tuple(COLOURS)}")
    big = size * _SUPERSAMPLE
    canvas = PILImage.new("RGB", (big, big), BACKGROUND)
    r = scene.half * big
    _draw(ImageDraw.Draw(canvas), scene.shape, scene.cx * big, scene.cy * big, r, r, COLOURS[scene.colour])
    return canvas.resize((size, size), PILImage.BOX)


def random_scene(rng: random.Random) -> Scene:
    size = rng.choice(tuple(SIZES))
    lo, hi = SIZES[size]
    half = rng.uniform(lo, hi) / 32
    jitter = 0.5 - half - 2 / 32  # keep a 2-pixel margin
    return Scene(colour=rng.choice(tuple(COLOURS)), shape=rng.choice(SHAPES), size=size,
                 cx=0.5 + rng.uniform(-jitter, jitter) * 0.5, cy=0.5 + rng.uniform(-jitter, jitter) * 0.5, half=half)


# ---------------------------------------------------------------- documents

_STORY_OPENINGS = ("Once there was {}.", "Look at {}.", "Here is {}.")
_STORY_MIDDLES = ("Then it became {}.", "Next came {}.", "After that we saw {}.")
_STORY_ENDINGS = ("The end.", "That was all.", "And that is the story.")


@dataclass
class SyntheticWorld:
    """A seeded stream of caption pairs and stories over the shapes world."""

    seed: int = 0
    image_size: int = 32

    def scenes(self, n: int, *, seed_offset: int = 0) -> list[Scene]:
        rng = random.Random(self.seed * 1_000_003 + seed_offset)
        return [random_scene(rng) for _ in range(n)]

    def caption_to_image(self, scene: Scene) -> Document:
        return Document([Text(scene.caption() + ":"), Image(render(scene, self.image_size))])

    def image_to_caption(self, scene: Scene) -> Document:
        return Document([Image(render(scene, self.image_size)), Text(" " + scene.caption() + ".")])

    def story(self, scenes: list[Scene], rng: random.Random) -> Document:
        segs: list = [Text(rng.choice(_STORY_OPENINGS).format(scenes[0].caption()) + " "),
                      Image(render(scenes[0], self.image_size))]
        for s in scenes[1:]:
            middle = " " + rng.choice(_STORY_MIDDLES).format(s.caption()) + " "
            segs += [Text(middle), Image(render(s, self.image_size))]
        segs.append(Text(" " + rng.choice(_STORY_ENDINGS)))
        return Document(segs)

    def documents(self, n: int, *, story_fraction: float = 0.2, seed_offset: int = 0) -> Iterator[Document]:
        """``n`` documents: caption->image, image->caption, and 2-3 image stories."""
        rng = random.Random(self.seed * 7_919 + seed_offset)
        for _ in range(n):
            r = rng.random()
            if r < story_fraction:
                yield self.story([random_scene(rng) for _ in range(rng.randint(2, 3))], rng)
            elif r < (1 + story_fraction) / 2:
                yield self.caption_to_image(random_scene(rng))
            else:
                yield self.image_to_caption(random_scene(rng))

    def texts(self, n: int, *, seed_offset: int = 0) -> Iterator[str]:
        """The text of ``n`` documents: a BPE training corpus."""
        for doc in self.documents(n, seed_offset=seed_offset):
            yield "".join(doc.texts)


# ------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class Reading:
    """What the oracle sees in an image."""

    colour: str
    shape: str
    size: str


def _template(shape: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The mask ``shape`` would have if it filled the bounding box ``box`` (x0, y0, x1, y1 inclusive).

    The template is stretched to the box's own width and height: a generated square a pixel taller than wide,
    with soft corners, is still a square (a template sized by the longer side reads it as a circle)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 + 1) / 2 * _SUPERSAMPLE, (y0 + y1 + 1) / 2 * _SUPERSAMPLE
    rx, ry = (x1 - x0 + 1) / 2 * _SUPERSAMPLE, (y1 - y0 + 1) / 2 * _SUPERSAMPLE
    canvas = PILImage.new("L", (size * _SUPERSAMPLE,) * 2, 0)
    _draw(ImageDraw.Draw(canvas), shape, cx, cy, rx, ry, 255)
    return np.asarray(canvas.resize((size, size), PILImage.BOX)) >= 128


def read_image(image: PILImage.Image, size: int = 32) -> Reading | None:
    """Read colour, shape and size back from an image (any mode or size); None if there is no shape."""
    rgb = np.asarray(to_rgb(image).resize((size, size), PILImage.BILINEAR), dtype=np.float32)
    # Foreground = far enough from the white background; the shape's colours all have a channel <= 140.
    mask = rgb.min(axis=-1) < 150
    if mask.sum() < 4:
        return None
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    mean = np.median(rgb[mask], axis=0)
    colour = tuple(COLOURS)[int(np.argmin(((palette - mean) ** 2).sum(-1)))]
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))

    def iou(shape: str) -> float:
        t = _template(shape, box, size)
        return (t & mask).sum() / max(1, (t | mask).sum())

    shape = max(SHAPES, key=iou)
    extent = max(box[2] - box[0] + 1, box[3] - box[1] + 1) * 32 / size
    small_max, large_min = 2 * SIZES["small"][1], 2 * SIZES["large"][0]
    return Reading(colour, shape, "small" if extent <= (small_max + large_min) / 2 else "large")


_WORDS = re.compile(r"[a-z]+")


def read_caption(text: str) -> Reading | None:
    """The first colour, shape and size words in ``text`` (None where a colour or shape is missing)."""
    words = _WORDS.findall(text.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    size = next((w for w in words if w in SIZES), "")
    if colour is None or shape is None:
        return None
    return Reading(colour, shape, size)
