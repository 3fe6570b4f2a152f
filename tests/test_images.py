import numpy as np
import pytest
from PIL import Image

from fusion.images import (
    IMAGE_MISSING,
    IMAGE_UNDECODABLE,
    IMAGE_UNREADABLE,
    MAX_PIXELS,
    ImageError,
    load_image,
    open_image,
    to_data_uri,
    to_rgb,
)


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


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view) comes upright."""
    stored = Image.new("RGB", (6, 3), (0, 0, 0))
    stored.putpixel((0, 0), (255, 0, 0))  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "p.png", exif=exif)
    upright = open_image(tmp_path / "p.png")
    assert upright.size == (3, 6)
    # rotating 90 degrees clockwise moves the stored top-left pixel to the top-right
    assert upright.getpixel((2, 0)) == (255, 0, 0) and upright.getpixel((0, 0)) == (0, 0, 0)
    assert np.array_equal(np.asarray(upright), np.rot90(np.asarray(stored), k=-1))


def test_animated_image_keeps_its_first_frame_and_says_so(tmp_path):
    frames = [Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 200))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    image, animated = load_image(tmp_path / "a.gif")
    assert animated and to_rgb(image).getpixel((4, 4))[0] > 150  # red: frame 0
    Image.new("RGB", (8, 8)).save(tmp_path / "still.gif")
    assert load_image(tmp_path / "still.gif")[1] is False


@pytest.mark.parametrize("mode, out_mode", [
    ("1", "1"), ("L", "L"), ("LA", "LA"), ("P", "P"), ("RGB", "RGB"), ("RGBA", "RGBA"), ("I;16", "I;16"),
    ("CMYK", "RGB"), ("YCbCr", "RGB"), ("LAB", "RGB"), ("HSV", "RGB"), ("PA", "RGBA"), ("RGBa", "RGBA"),
    ("La", "RGBA"), ("I", "I;16"), ("F", "I;16")])
def test_every_mode_can_be_written_as_png(mode, out_mode):
    src = Image.new("RGB", (5, 3), (10, 200, 30))
    im = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16)) if mode == "I;16" else src.convert(mode)
    back = open_image(to_data_uri(im))
    assert back.mode == out_mode and back.size == im.size
    if out_mode == mode:  # a mode PNG holds: exact
        assert back.tobytes() == im.tobytes()
    else:  # converted: the same picture in RGB
        assert np.abs(np.asarray(to_rgb(back), np.int16) - np.asarray(to_rgb(im), np.int16)).max() <= 2


def test_errors_carry_their_cause(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    cases = {tmp_path / "missing.png": IMAGE_MISSING, tmp_path / "folder.png": IMAGE_UNREADABLE,
             tmp_path / "empty.jpg": IMAGE_UNDECODABLE}
    for path, cause in cases.items():
        with pytest.raises(ImageError) as err:
            open_image(path)
        assert err.value.cause == cause, (path, err.value)
