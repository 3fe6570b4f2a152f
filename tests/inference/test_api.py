"""The user-facing Fusion object: documents in, documents / streams out, HTML, CLI, bad inputs."""

import numpy as np
import pytest
from PIL import Image as PILImage

from fusion.api import Fusion
from fusion.cli.generate import main
from fusion.document import Document, Image, Text
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.vq_config import VQConfig

from .conftest import bias_logits, make_model


@pytest.fixture
def fusion_model(tokenizer) -> Fusion:
    return Fusion(make_model(tokenizer.vocab, seed=0), tokenizer)


def picture(mode: str = "RGB") -> PILImage.Image:
    rgb = PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def joined(parts) -> Document:
    """Stream pieces -> Document: consecutive strings form one Text segment."""
    segs = []
    for p in parts:
        if isinstance(p, str):
            assert p, "empty pieces are not yielded"
            if segs and isinstance(segs[-1], Text):
                segs[-1] = Text(segs[-1].text + p)
            else:
                segs.append(Text(p))
        else:
            assert isinstance(p, PILImage.Image)
            segs.append(Image(p))
    return Document(segs)


def test_prompt_forms_and_batches(fusion_model):
    kw = dict(mode="text", max_new_tokens=6, temperature=0.0)
    one = fusion_model.generate("a red circle", **kw)
    assert isinstance(one, Document) and one.texts
    assert fusion_model.generate(["a red circle"], **kw) == one  # a list of parts is one prompt
    assert fusion_model.generate(Document.of("a red circle"), **kw) == one
    batch = fusion_model.generate([Document.of("a red circle"), ["a blue", picture()]], **kw)
    assert isinstance(batch, list) and len(batch) == 2 and batch[0] == one  # batching does not change a row


@pytest.mark.parametrize("mode,kw", [("image", dict(guidance_scale=3.0, temperature=0.8, top_k=20)),
                                     ("text", dict(temperature=1.0, stop_strings=["e"])),
                                     ("mixed", dict(temperature=0.0, max_new_tokens=150))])
def test_stream_concatenation_equals_generate(fusion_model, mode, kw):
    model = fusion_model.model
    hook = bias_logits(model, [model.cfg.vocab.boi_id], 4.0) if mode == "mixed" else None
    try:
        doc = fusion_model.generate("a small green", mode=mode, seed=5, **kw)
        parts = list(fusion_model.stream("a small green", mode=mode, seed=5, **kw))
    finally:
        if hook:
            hook.remove()
    assert joined(parts) == doc
    if mode == "image":
        assert len(doc.images) == 1 and doc.images[0].size == (32, 32) and not doc.texts
    if mode == "mixed":
        assert doc.images and doc.texts  # both kinds were streamed
    if mode == "text":
        text = "".join(doc.texts)
        full = "".join(fusion_model.generate("a small green", mode=mode, seed=5, temperature=1.0,
                                             max_new_tokens=200).texts)
        assert text.endswith("e") and text.count("e") == 1 and full.startswith(text)


def test_html_holds_the_generated_images(fusion_model, tmp_path):
    docs = fusion_model.generate([["a red circle:"], ["a blue square:"]], mode="image", seed=1)
    page = Document(docs[0].segments + docs[1].segments).to_html(tmp_path / "out.html")
    assert page.count("<img src='data:image/png;base64,") == 2
    assert (tmp_path / "out.html").read_text() == page


def test_image_prompts_of_any_mode_go_through_to_rgb(fusion_model):
    kw = dict(mode="text", max_new_tokens=4, temperature=0.0)
    want = fusion_model.generate([picture(), "what is it?"], **kw)
    for mode in ("RGBA", "L", "P", "I;16"):
        got = fusion_model.generate([picture(mode), "what is it?"], **kw)
        assert isinstance(got, Document) and len(got.texts) == 1
    assert fusion_model.generate([picture("RGBA"), "what is it?"], **kw) == want  # opaque alpha: same pixels


def test_bad_requests_fail_clearly(fusion_model, tokenizer):
    with pytest.raises(ValueError, match="cannot finish the image"):
        fusion_model.generate("x", mode="image", max_new_tokens=tokenizer.tokens_per_image)
    with pytest.raises(ValueError, match="guidance_scale"):
        fusion_model.generate("x", mode="image", guidance_scale=-2.0)
    with pytest.raises(ValueError, match="context"):
        fusion_model.generate("x " * 400, mode="text", max_new_tokens=4)
    with pytest.raises(TypeError, match="prompt"):
        fusion_model.generate(42)
    with pytest.raises(ValueError, match="stop strings"):
        fusion_model.generate("x", mode="text", stop_strings=[""])
    no_decoder = MixedTokenizer(tokenizer.text, ImageTokenizer(VQConfig.preset("tiny", decoder=False)))
    encoder_only = Fusion(fusion_model.model, no_decoder)
    with pytest.raises(ValueError, match="no VQ decoder"):
        encoder_only.generate("x", mode="image")
    assert encoder_only.generate("x", mode="text", max_new_tokens=3).texts  # text still works
    other = make_model(MixedTokenizer(tokenizer.text, ImageTokenizer(VQConfig.preset("tiny", num_embeddings=64)))
                       .vocab)
    with pytest.raises(ValueError, match="vocabulary"):
        Fusion(other, tokenizer)


def test_load_and_cli_round_trip(fusion_model, tmp_path):
    fusion_model.save_pretrained(tmp_path / "ckpt")
    loaded = Fusion.from_pretrained(tmp_path / "ckpt", device="cpu")
    kw = dict(mode="image", seed=2, temperature=0.5)
    assert loaded.generate("a red circle:", **kw) == fusion_model.generate("a red circle:", **kw)
    picture().save(tmp_path / "in.png")
    out = tmp_path / "page.html"
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "a red circle:", "--image",
                 str(tmp_path / "in.png"), "--mode", "image", "--guidance-scale", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert out.read_text().count("<img src='data:image/png;base64,") == 2  # the prompt's and the generated
