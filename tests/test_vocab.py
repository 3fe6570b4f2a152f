import pytest
import torch

from fusion.vocab import SPECIAL_TOKENS, Vocab


def test_layout_is_specials_then_text_then_image():
    v = Vocab.build(text_size=100, image_size=16)
    assert v.size == len(SPECIAL_TOKENS) + 100 + 16
    assert (v.pad_id, v.bos_id, v.eos_id, v.boi_id, v.eoi_id) == (0, 1, 2, 3, 4)
    assert (v.text_start, v.image_start) == (5, 105)
    # every id belongs to exactly one range
    kinds = torch.zeros(v.size, dtype=torch.long)
    kinds[list(v.special_ids)] += 1
    kinds[v.text_start:v.text_start + v.text_count] += 1
    kinds[v.image_start:v.image_start + v.image_count] += 1
    assert bool((kinds == 1).all())


def test_image_translation_round_trip_and_range_checks():
    v = Vocab.build(50, 32)
    codes = torch.randint(0, 32, (3, 8))
    ids = v.image_ids(codes)
    assert bool(v.image_id_mask(ids).all())
    assert torch.equal(v.image_codes(ids), codes)
    with pytest.raises(ValueError, match="image codes"):
        v.image_ids(torch.tensor([32]))
    with pytest.raises(ValueError, match="outside the image range"):
        v.image_codes(torch.tensor([v.text_start]))


def test_text_translation_and_masks():
    v = Vocab.build(50, 32)
    pieces = torch.arange(50)
    assert torch.equal(v.text_pieces(v.text_ids(pieces)), pieces)
    text, image = v.text_mask(), v.image_mask()
    assert int(image.sum()) == 32 and not bool((text & image).any())
    assert bool(text[v.eos_id]) and not bool(text[v.boi_id]) and not bool(text[v.pad_id])
    assert int(text.sum()) == 50 + 1  # the pieces plus eos


def test_chameleon_style_layout_keeps_codes_inside_text_range():
    # Chameleon: 8192 codes at 4..8195 inside a 65,536-id BPE space
    v = Vocab(size=65536, text_start=0, text_count=65536, image_start=4, image_count=8192,
              pad_id=1, bos_id=0, eos_id=2, boi_id=8197, eoi_id=8196)
    assert torch.equal(v.image_ids(torch.tensor([0, 8191])), torch.tensor([4, 8195]))
    text = v.text_mask()
    assert not bool(text[4:8196].any()) and bool(text[8198])
    assert Vocab.from_dict(v.to_dict()) == v


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError):
        Vocab.build(0, 10)
    with pytest.raises(ValueError, match="does not fit"):
        Vocab(size=10, text_start=0, text_count=5, image_start=8, image_count=5,
              pad_id=0, bos_id=1, eos_id=2, boi_id=3, eoi_id=4)
    with pytest.raises(ValueError, match="inside the image range"):
        Vocab(size=20, text_start=0, text_count=20, image_start=0, image_count=8,
              pad_id=0, bos_id=9, eos_id=10, boi_id=11, eoi_id=12)
