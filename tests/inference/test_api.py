"""The user-facing Fusion object: documents in, documents / streams out, HTML, CLI, bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from fusion.api import Fusion
from fusion.cli.generate import main
from fusion.document import Document, Image, Text
from fusion.inference.config import GenerationConfig
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
    """As in HF: one prompt gives a Document, a list of prompts a list (a prompt: str, image, Document, parts)."""
    kw = dict(mode="text", max_new_tokens=6, do_sample=False)
    one = fusion_model.generate("a red circle", **kw)
    assert isinstance(one, Document) and one.texts
    assert fusion_model.generate(["a red circle"], **kw) == [one]  # a list is a batch, even of one
    assert fusion_model.generate(Document.of("a red circle"), **kw) == one
    assert fusion_model.generate(["a red", " circle"], **kw) == [fusion_model.generate("a red", **kw),
                                                                  fusion_model.generate(" circle", **kw)]
    parts = ["a blue", picture()]
    batch = fusion_model.generate([Document.of("a red circle"), parts], **kw)
    assert isinstance(batch, list) and len(batch) == 2 and batch[0] == one  # batching does not change a row
    assert batch[1] == fusion_model.generate(Document.of(*parts), **kw)  # a list inside the batch: one prompt
    with pytest.raises(ValueError, match="empty list"):
        fusion_model.generate([], **kw)


def test_do_sample_false_is_greedy_whatever_the_temperature(fusion_model):
    kw = dict(mode="text", max_new_tokens=10)
    greedy = fusion_model.generate("a red", temperature=0.0, **kw)
    assert fusion_model.generate("a red", do_sample=False, temperature=5.0, **kw) == greedy
    assert fusion_model.generate("a red", do_sample=False, temperature=5.0, seed=None, **kw) == greedy
    assert fusion_model.generate("a red", temperature=5.0, seed=1, **kw) != greedy  # sampling does sample


# The random model's logits are nearly flat, so at temperature 1 the noise alone picks the token; at 0.05 both the
# prompt and the seed matter, which is what the tests below need to tell rows apart.
SAMPLED = dict(mode="text", max_new_tokens=12, temperature=0.05)


def test_seed_none_draws_fresh_randomness(fusion_model):
    draws = {"".join(fusion_model.generate("a red", seed=None, **{**SAMPLED, "temperature": 1.0}).texts)
             for _ in range(3)}
    assert len(draws) == 3
    assert fusion_model.generate("a red", seed=4, **SAMPLED) == fusion_model.generate("a red", seed=4, **SAMPLED)


def test_a_rows_sample_depends_on_its_seed_not_on_its_batch(fusion_model):
    prompts = ["a red", "a small blue", Document.of("a", picture(), "green")]
    alone = [fusion_model.generate(p, seed=7, **SAMPLED) for p in prompts]
    assert len({"".join(d.texts) for d in alone}) == 3
    assert fusion_model.generate(prompts, seed=7, **SAMPLED) == alone
    assert fusion_model.generate(prompts[::-1], seed=7, **SAMPLED) == alone[::-1]  # nor on its position
    assert fusion_model.generate([prompts[1], prompts[1]], seed=7, **SAMPLED) == [alone[1], alone[1]]
    # one seed or generator per row; a generator is the row's own stream
    mixed = fusion_model.generate(prompts[:2], seed=[3, torch.Generator().manual_seed(8)], **SAMPLED)
    assert mixed == [fusion_model.generate(prompts[0], seed=3, **SAMPLED),
                     fusion_model.generate(prompts[1], seed=8, **SAMPLED)]
    with pytest.raises(ValueError, match="one seed per output row"):
        fusion_model.generate(prompts, seed=[1, 2], **SAMPLED)
    with pytest.raises(TypeError, match="seed"):
        fusion_model.generate(prompts[0], seed="7", **SAMPLED)


def test_num_return_sequences_are_grouped_by_prompt(fusion_model):
    prompts = ["a red", "a small blue"]
    out = fusion_model.generate(prompts, seed=5, num_return_sequences=3, **SAMPLED)
    assert len(out) == 6
    for i, p in enumerate(prompts):
        # sample k of a prompt is the row seeded seed + k: the same as asking for that seed alone
        assert out[3 * i:3 * i + 3] == [fusion_model.generate(p, seed=5 + k, **SAMPLED) for k in range(3)]
    assert len({"".join(d.texts) for d in out}) == 6
    single = fusion_model.generate("a red", seed=5, num_return_sequences=2, **SAMPLED)
    assert single == out[:2]  # several samples of one prompt come as a list


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


def test_streaming_a_batch_yields_row_piece_pairs(fusion_model):
    """Each row's pieces, joined, are its Document from generate, with stop strings and several samples."""
    model = fusion_model.model
    prompts = ["a small green", Document.of("a", picture(), "red"), "blue"]
    kw = dict(mode="mixed", seed=3, temperature=0.7, max_new_tokens=90, num_return_sequences=2, stop_strings=["e"])
    hook = bias_logits(model, [model.cfg.vocab.boi_id], 3.0)  # images, so rows switch modality at different steps
    try:
        docs = fusion_model.generate(prompts, **kw)
        pairs = list(fusion_model.stream(prompts, **kw))
    finally:
        hook.remove()
    assert {row for row, _ in pairs} == set(range(6))
    assert [joined(p for row, p in pairs if row == b) for b in range(6)] == docs
    assert any(d.images for d in docs) and any("e" in "".join(d.texts) for d in docs)
    one = fusion_model.stream("blue", mode="text", seed=3, max_new_tokens=8, num_return_sequences=2)
    assert {row for row, _ in one} == {0, 1}  # several samples of one prompt stream as pairs too


def test_html_holds_the_generated_images(fusion_model, tmp_path):
    docs = fusion_model.generate([["a red circle:"], ["a blue square:"]], mode="image", seed=1)
    page = Document(docs[0].segments + docs[1].segments).to_html(tmp_path / "out.html")
    assert page.count("<img src='data:image/png;base64,") == 2
    assert (tmp_path / "out.html").read_text() == page


def test_image_prompts_of_any_mode_go_through_to_rgb(fusion_model):
    kw = dict(mode="text", max_new_tokens=4, temperature=0.0)
    want = fusion_model.generate(Document.of(picture(), "what is it?"), **kw)
    for mode in ("RGBA", "L", "P", "I;16"):
        got = fusion_model.generate(Document.of(picture(mode), "what is it?"), **kw)
        assert isinstance(got, Document) and len(got.texts) == 1
    assert fusion_model.generate([[picture("RGBA"), "what is it?"]], **kw) == [want]  # opaque alpha: same pixels


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


def test_save_load_round_trip_keeps_outputs_and_generation_defaults(fusion_model, tmp_path):
    fusion_model.generation_config = GenerationConfig(mode="image", temperature=0.5, guidance_scale=2.0)
    fusion_model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "generation_config.json").is_file()
    loaded = Fusion.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.generation_config == fusion_model.generation_config
    doc = loaded.generate("a red circle:", seed=2)  # the saved defaults apply: one image
    assert doc == fusion_model.generate("a red circle:", seed=2) and len(doc.images) == 1 and not doc.texts
    assert loaded.generate("a red circle:", seed=2, mode="text", max_new_tokens=5).images == []  # keywords win
    picture().save(tmp_path / "in.png")
    out = tmp_path / "page.html"
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "a red circle:", "--image",
                 str(tmp_path / "in.png"), "--guidance-scale", "2", "--num-return-sequences", "2", "--out", str(out),
                 "--device", "cpu", "--seed", "1"]) == 0
    assert out.read_text().count("<img src='data:image/png;base64,") == 4  # twice the prompt's, two generated
    fast = tmp_path / "fast.html"
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "a red circle:", "--speculative",
                 "--speculative-window", "4", "--out", str(fast), "--device", "cpu", "--seed", "1"]) == 0
    assert fast.read_text().count("<img src='data:image/png;base64,") == 1
    with pytest.raises(SystemExit):  # a value out of range is a usage error naming the flag's field
        main(["--checkpoint", str(tmp_path / "ckpt"), "--prompt", "x", "--speculative-window", "1"])


def test_to_moves_the_model(tokenizer):
    model = Fusion(make_model(tokenizer.vocab, seed=0), tokenizer)
    ids = tokenizer.encode(Document.of("a red circle"))[None]
    with torch.no_grad():
        want = model.model(ids)
        assert model.to("cpu", torch.float64) is model
        assert model.model.embed.weight.dtype == torch.float64 and model.device == torch.device("cpu")
        torch.testing.assert_close(model.model(ids), want, rtol=1e-5, atol=1e-5)  # fp64 math, fp32 logits
    assert model.tokenizer.image.quant_conv.weight.dtype == torch.float32  # the VQ keeps its dtype
    assert model.generate("a red", mode="image", seed=0).images


def _corrupt(path, name: str, value: float) -> None:
    state = load_file(str(path))
    state[name] = state[name].clone().view(-1).index_fill_(0, torch.tensor([3]), value).view(state[name].shape)
    save_file(state, str(path))


def test_nonfinite_weights_are_refused_at_load_naming_the_tensor(fusion_model, tmp_path):
    fusion_model.save_pretrained(tmp_path / "ckpt")
    _corrupt(tmp_path / "ckpt" / "model.safetensors", "layers.1.mlp.up_proj.weight", float("nan"))
    with pytest.raises(ValueError, match=r"model.safetensors: NaN or inf in 1 tensor\(s\): layers.1.mlp.up_proj"):
        Fusion.from_pretrained(tmp_path / "ckpt", device="cpu")
    broken = Fusion.from_pretrained(tmp_path / "ckpt", device="cpu", check_finite=False)  # on request
    with pytest.raises(FloatingPointError, match="prompt 0, prompt 1"):  # and generation says so
        broken.generate(["a", "b"], mode="text", max_new_tokens=4)
    fusion_model.save_pretrained(tmp_path / "vq")
    _corrupt(tmp_path / "vq" / "vq.safetensors", "decoder.conv_out.weight", float("inf"))
    with pytest.raises(ValueError, match="vq.safetensors: NaN or inf in 1 tensor.*decoder.conv_out.weight"):
        Fusion.from_pretrained(tmp_path / "vq", device="cpu")


def test_nonfinite_logits_raise_naming_the_row(fusion_model):
    """A row whose logits go NaN mid-generation is flagged on the device and reported at the next sync."""
    calls = []

    def poison(module, inputs, out):  # row 1's logits turn NaN from the 5th forward on
        calls.append(1)
        if len(calls) >= 5:
            out = out.clone()
            out[1] = float("nan")
        return out

    hook = fusion_model.model.lm_head.register_forward_hook(poison)
    try:
        with pytest.raises(FloatingPointError, match=r"NaN or inf, or nothing was left to sample, in prompt 1\b"):
            fusion_model.generate(["a", "b", "c"], mode="text", max_new_tokens=40, seed=0)
        calls.clear()
        with pytest.raises(FloatingPointError, match="prompt 0, sample 1"):
            list(fusion_model.stream("a", mode="text", max_new_tokens=40, num_return_sequences=2))
    finally:
        hook.remove()


def test_a_banned_token_at_minus_inf_is_not_an_error(fusion_model):
    """-inf is how hooks and processors ban a token: only NaN, +inf or a row with nothing left are errors."""
    banned = fusion_model.tokenizer.vocab.text_start + 7
    hook = fusion_model.model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, torch.tensor([banned]), float("-inf")))
    try:
        doc = fusion_model.generate("a", mode="text", max_new_tokens=30, seed=0, do_sample=False)
        ids = fusion_model.tokenizer.encode(doc, bos=False, eos=False)
    finally:
        hook.remove()
    assert doc.texts and banned not in ids.tolist()
