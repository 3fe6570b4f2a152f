import pytest
import torch

from fusion.data.synthetic import SyntheticWorld, render
from fusion.document import Document, Image, Text
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(seed=2).texts(400), vocab_size=320)
    return MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())


def test_layout_of_one_document(tok):
    v, n = tok.vocab, tok.tokens_per_image
    scene = SyntheticWorld(seed=0).scenes(1)[0]
    doc = Document.of("a red circle:", render(scene), " done")
    ids = tok.encode(doc)
    head = tok.text.encode("a red circle:")
    assert ids[0] == v.bos_id and ids[-1] == v.eos_id
    assert ids[1:1 + len(head)].tolist() == [p + v.text_start for p in head]
    boi = 1 + len(head)
    assert ids[boi] == v.boi_id and ids[boi + n + 1] == v.eoi_id
    codes = tok.image.encode([render(scene)])[0]
    assert torch.equal(ids[boi + 1:boi + 1 + n], codes + v.image_start)
    mask = tok.vocab.image_id_mask(ids)
    assert int(mask.sum()) == n and bool(mask[boi + 1:boi + 1 + n].all())


def test_round_trip_text_exact_and_codes_exact(tok):
    docs = list(SyntheticWorld(seed=9).documents(12, story_fraction=0.5))
    batch = tok.encode_batch(docs)
    back = tok.decode_batch(batch)
    for doc, ids, again in zip(docs, batch, back, strict=True):
        assert [type(s) for s in again] == [type(s) for s in doc]
        assert again.texts == doc.texts
        # decoded images re-encode to the very codes they were decoded from
        codes = ids[tok.vocab.image_id_mask(ids)].view(-1, tok.tokens_per_image) - tok.vocab.image_start
        if again.images:
            assert torch.equal(tok.image.encode(again.images), codes)


def test_text_spelling_special_tokens_stays_text(tok):
    ids = tok.encode(Document.of("<boi><eoi><eos>"), bos=False, eos=False)
    assert not any(int(i) in tok.vocab.special_ids for i in ids)
    assert tok.decode(ids).texts == ["<boi><eoi><eos>"]


def test_bad_inputs(tok):
    v, n = tok.vocab, tok.tokens_per_image
    with pytest.raises(ValueError, match="empty"):
        tok.encode(Document([Text("")]))
    with pytest.raises(TypeError):
        tok.encode_batch(["not a document"])
    codes = [v.image_start] * n
    with pytest.raises(ValueError, match="cut off"):
        tok.decode([v.boi_id] + codes[:-3])
    with pytest.raises(ValueError, match="malformed"):
        tok.decode([v.boi_id] + codes[:-1] + [v.text_start, v.eoi_id])
    with pytest.raises(ValueError, match="outside an image span"):
        tok.decode([v.image_start])
    with pytest.raises(ValueError, match="out of the vocabulary"):
        tok.decode([v.size])
    # generated output cut inside its last image: dropped only when asked
    doc = tok.decode([v.text_start + 5, v.boi_id] + codes[:3], strict=False)
    assert len(doc.segments) == 1 and isinstance(doc.segments[0], Text)
    doc = tok.decode([v.boi_id] + codes + [v.eoi_id])
    assert isinstance(doc.segments[0], Image)


def test_the_old_per_token_image_mask_warns_and_agrees(tok):
    ids = tok.encode(Document.of("a red circle", render(SyntheticWorld(0).scenes(1)[0])))
    with pytest.warns(DeprecationWarning, match="vocab.image_id_mask"):
        old = tok.image_mask(ids)
    assert torch.equal(old, tok.vocab.image_id_mask(ids))
