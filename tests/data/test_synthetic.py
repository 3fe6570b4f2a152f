import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from fusion.data.synthetic import COLOURS, SHAPES, SyntheticWorld, read_caption, read_image, render


def test_oracle_reads_clean_images_at_least_99_percent():
    scenes = SyntheticWorld(seed=3).scenes(600)
    readings = [read_image(render(s)) for s in scenes]
    correct = sum(r is not None and (r.colour, r.shape, r.size) == (s.colour, s.shape, s.size)
                  for r, s in zip(readings, scenes, strict=True))
    assert correct / len(scenes) >= 0.99
    assert {s.colour for s in scenes} == set(COLOURS) and {s.shape for s in scenes} == set(SHAPES)


def test_oracle_survives_noise_other_sizes_and_modes():
    rng = np.random.default_rng(0)
    scenes = SyntheticWorld(seed=4).scenes(200)
    ok = 0
    for s in scenes:
        arr = np.asarray(render(s, 64), dtype=np.float64) + rng.normal(0, 12, (64, 64, 3))
        noisy = PILImage.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGBA")
        r = read_image(noisy)
        ok += r is not None and (r.colour, r.shape) == (s.colour, s.shape)
    assert ok / len(scenes) >= 0.97


def test_oracle_refuses_blank_and_is_not_fooled_by_wrong_shape():
    assert read_image(PILImage.new("RGB", (32, 32), "white")) is None
    scene = SyntheticWorld(seed=5).scenes(1)[0]
    r = read_image(render(scene))
    other = next(s for s in SyntheticWorld(seed=6).scenes(50) if s.shape != scene.shape)
    assert read_image(render(other)).shape != r.shape


def test_documents_are_seeded_and_varied():
    a = list(SyntheticWorld(seed=7).documents(60))
    b = list(SyntheticWorld(seed=7).documents(60))
    c = list(SyntheticWorld(seed=8).documents(60))
    assert a == b and a != c
    n_images = [len(d.images) for d in a]
    assert set(n_images) >= {1, 2} and max(n_images) <= 3
    # captions in documents describe the image that follows or precedes them
    for d in a:
        if len(d.images) == 1:
            assert read_caption("".join(d.texts)) == read_image(d.images[0])


def test_read_caption():
    r = read_caption("Then it became A LARGE green cross.")
    assert (r.colour, r.shape, r.size) == ("green", "cross", "large")
    assert read_caption("nothing here") is None


def _drawn_by_pil(kind: str, w: int, h: int, x0: int, y0: int, corner: float = 0.0) -> PILImage.Image:
    """A w x h shape drawn with PIL's own primitives (not the world's renderer) at 4x, boxed down to 32x32;
    ``corner``: the rounded square's corner radius in pixels."""
    big = PILImage.new("RGB", (128, 128), "white")
    box = [4 * x0, 4 * y0, 4 * (x0 + w), 4 * (y0 + h)]
    draw = ImageDraw.Draw(big)
    if kind == "rounded square":
        draw.rounded_rectangle(box, radius=round(4 * corner), fill=COLOURS["blue"])
    else:
        draw.ellipse(box, fill=COLOURS["blue"])
    return big.resize((32, 32), PILImage.BOX)


def test_oracle_reads_soft_cornered_and_slightly_stretched_shapes_as_a_person_would():
    """Generated shapes are rarely exact. A square one or two pixels taller than wide, with corners rounded by a
    quarter of its side, is a square (a template sized by the longer side read these as circles); rounded by
    nearly half its side it is a circle; an ellipse is a circle."""
    for w, h in ((15, 13), (13, 15), (16, 14), (13, 12), (24, 22)):
        for x0, y0 in ((6, 7), (9, 8)):
            side = min(w, h)
            assert read_image(_drawn_by_pil("rounded square", w, h, x0, y0, side / 4)).shape == "square"
            assert read_image(_drawn_by_pil("rounded square", w, h, x0, y0, 0.45 * side)).shape == "circle"
            assert read_image(_drawn_by_pil("ellipse", w, h, x0, y0)).shape == "circle"
