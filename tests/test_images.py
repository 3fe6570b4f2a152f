import numpy as np
import pytest
from PIL import Image

from fusion.images import MAX_PIXELS, ImageError, open_image, to_data_uri, to_rgb


def test_rgba_is_blended_on_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 255, 128))
    rgb = np.asarray(to_rgb(im))
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 2]) == (255, 255, 255)  # fully transparent -> white
    expected = np.array([0, 0, 255]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.allclose(rgb[0, 1], expected, atol=1.5)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK"])
def test_common_modes_become_rgb(mode):
    im = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    rgb = np.asarray(to_rgb(im))[0, :, 0]
    assert list(rgb) == [0, 128, 255]


def test_zero_size_and_huge_are_refused(monkeypatch):
    with pytest.raises(ImageError, match="zero size"):
        to_rgb(Image.new("RGB", (0, 5)))
    monkeypatch.setattr("fusion.images.MAX_PIXELS", 100)
    with pytest.raises(ImageError, match="over the limit"):
        to_rgb(Image.new("RGB", (20, 20)))
    assert MAX_PIXELS >= 4096 * 4096


def test_open_paths_data_uris_and_errors(tmp_path):
    im = Image.new("RGB", (6, 4), (1, 2, 3))
    im.save(tmp_path / "a.png")
    assert open_image("a.png", base_dir=tmp_path).tobytes() == im.tobytes()
    assert open_image(to_data_uri(im)).tobytes() == im.tobytes()
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot decode"):
        open_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="base64"):
        open_image("data:image/png;base64,@@@")
    # a truncated PNG fails at load time, not later
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        open_image(tmp_path / "cut.png")
