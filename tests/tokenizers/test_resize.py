"""The image tokenizer's resize policy: ``crop`` (Chameleon's centre crop) or ``pad`` (keeps every pixel), checked
against the same geometry done by hand with PIL."""

import logging

import numpy as np
import pytest
from PIL import Image

from fusion.tokenizers.image import ImageTokenizer, kept_fraction
from fusion.tokenizers.vq_config import VQConfig


def _striped(w, h):
    """An image whose columns differ, so a crop and a pad give different pixels."""
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    return Image.fromarray(np.broadcast_to(np.concatenate([x, 255 - x, x / 2], 2), (h, w, 3)).astype(np.uint8))


def test_crop_and_pad_against_a_hand_resize():
    image = _striped(160, 40)  # 4:1
    crop = ImageTokenizer(VQConfig.preset("tiny")).prepare(image)
    want = image.resize((128, 32), Image.BICUBIC).crop((48, 0, 80, 32))
    assert crop.size == (32, 32) and crop.tobytes() == want.tobytes()

    pad = ImageTokenizer(VQConfig.preset("tiny", resize="pad")).prepare(image)
    canvas = Image.new("RGB", (32, 32), (255, 255, 255))
    canvas.paste(image.resize((32, 8), Image.BICUBIC), (0, 12))
    assert pad.size == (32, 32) and pad.tobytes() == canvas.tobytes()
    assert kept_fraction((160, 40), "crop") == 0.25 and kept_fraction((160, 40), "pad") == 1.0
    assert kept_fraction((4000, 10), "crop") == pytest.approx(0.0025)


def test_a_crop_that_drops_most_of_an_image_is_logged(caplog):
    tok = ImageTokenizer(VQConfig.preset("tiny"))
    with caplog.at_level(logging.WARNING, logger="fusion.tokenizers.image"):
        tok.preprocess([_striped(40, 40), _striped(400, 10)])
    assert len(caplog.records) == 1 and "keeps 2% of it" in caplog.records[0].message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fusion.tokenizers.image"):
        ImageTokenizer(VQConfig.preset("tiny", resize="pad")).preprocess([_striped(400, 10)])
    assert not caplog.records


def test_the_policy_is_saved_with_the_tokenizer(tmp_path):
    ImageTokenizer(VQConfig.preset("tiny", resize="pad")).save_pretrained(tmp_path)
    assert ImageTokenizer.from_pretrained(tmp_path).cfg.resize == "pad"
    with pytest.raises(ValueError, match="resize must be one of"):
        VQConfig.preset("tiny", resize="stretch")
