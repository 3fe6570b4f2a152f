"""VQ image tokenizer: shapes, determinism, files, preprocessing, bad input, HF Chameleon and taming parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from fusion.data.synthetic import SyntheticWorld, render
from fusion.interop.taming import image_tokenizer_from_hf, image_tokenizer_from_taming, taming_state_dict
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.vq_config import VQConfig

# A plain-codebook config in Chameleon's layout (down + mid attention), small enough for a CPU test.
PLAIN = VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                 latent_channels=16, embed_dim=16, num_embeddings=64, norm_groups=32)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (GroupNorm affines too), so a misplaced tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.5) + (1.0 if "norm" in name
                                                                                        and "weight" in name else 0))


@pytest.fixture(scope="module")
def tiny() -> ImageTokenizer:
    torch.manual_seed(0)
    tok = ImageTokenizer(VQConfig.preset("tiny", kmeans_init=False))
    _randomize(tok, 0)
    return tok.eval()


@pytest.fixture(scope="module")
def images() -> list[PILImage.Image]:
    return [render(s) for s in SyntheticWorld(0).scenes(6)]


def test_presets_derive_grid():
    assert VQConfig.preset("tiny").grid == (8, 8) and VQConfig.preset("tiny").tokens_per_image == 64
    cham = VQConfig.preset("chameleon")
    assert (cham.grid, cham.tokens_per_image, cham.num_embeddings, cham.embed_dim) == ((32, 32), 1024, 8192, 256)
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(base_channels=12, norm_groups=8)
    with pytest.raises(ValueError, match="preset"):
        VQConfig.preset("huge")


def test_encode_decode_shapes_and_dtypes(tiny, images):
    codes = tiny.encode(images)
    assert codes.shape == (6, tiny.tokens_per_image) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tiny.codebook_size
    pixels = tiny.decode(codes)
    assert pixels.shape == (6, 3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    pics = tiny.decode_images(codes)
    assert [p.size for p in pics] == [(32, 32)] * 6 and all(p.mode == "RGB" for p in pics)
    assert tiny.encode([]).shape == (0, 64)


def test_encode_is_deterministic_batched_and_mode_independent(tiny, images):
    codes = tiny.encode(images)
    assert torch.equal(codes, tiny.encode(images, batch_size=2))
    assert torch.equal(codes[2:3], tiny.encode(images[2:3]))
    assert torch.equal(codes, tiny.encode(tiny.preprocess(images)))
    tiny.train()
    try:
        assert torch.equal(codes, tiny.encode(images))
        assert tiny.training  # encode restores the caller's mode
    finally:
        tiny.eval()


def test_encode_matches_training_forward_lookup(tiny, images):
    """encode's deterministic lookup picks the same codes as vector-quantize-pytorch's forward."""
    with torch.no_grad():
        _, indices, _ = tiny(tiny.preprocess(images))
    assert torch.equal(indices, tiny.encode(images))


def test_save_load_round_trip_is_bit_exact(tiny, images, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "vq.safetensors").is_file() and (tmp_path / "vq.json").is_file()
    back = ImageTokenizer.from_pretrained(tmp_path)
    assert back.cfg == tiny.cfg
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    codes = tiny.encode(images)
    assert torch.equal(codes, back.encode(images))
    assert torch.equal(tiny.decode(codes), back.decode(codes))


def test_preprocess_modes_and_sizes(tiny):
    red = (220, 30, 30)
    rgba = PILImage.new("RGBA", (32, 32), (0, 0, 0, 0))
    x = tiny.preprocess([rgba])
    assert torch.allclose(x, torch.ones_like(x))  # transparent -> white
    gray16 = PILImage.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    assert gray16.mode.startswith("I")
    assert torch.allclose(tiny.preprocess([gray16]), torch.ones(1, 3, 32, 32))
    assert torch.allclose(tiny.preprocess([PILImage.new("L", (32, 32), 0)]), -torch.ones(1, 3, 32, 32))
    pal = PILImage.new("RGB", (32, 32), red).convert("P", palette=PILImage.ADAPTIVE)
    expect = torch.tensor(red).float().div(127.5).sub(1).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert torch.allclose(tiny.preprocess([pal]), expect, atol=1e-6)
    # Wide 96x48 image: shortest side 48 -> 32, width 64, centre crop keeps the middle half (blue | red).
    wide = np.zeros((48, 96, 3), dtype=np.uint8)
    wide[:, :24], wide[:, 24:48], wide[:, 48:72], wide[:, 72:] = (0, 255, 0), (0, 0, 255), red, (0, 255, 0)
    x = tiny.preprocess([PILImage.fromarray(wide)])[0]
    assert x.shape == (3, 32, 32)
    assert x[2, :, 2].min() > 0.9 and x[1, :, 2].max() < -0.9      # left edge of the crop: blue, no green
    assert x[0, :, 29].min() > 0.6 and x[1, :, 29].max() < -0.6     # right edge: red, no green
    assert tiny.encode([PILImage.fromarray(wide), rgba, gray16, pal]).shape == (4, 64)


def test_bad_input_errors(tiny):
    good = torch.zeros(2, 3, 32, 32)
    for bad, match in [(torch.zeros(2, 3, 16, 16), "must be"), (torch.zeros(3, 32, 32), "must be"),
                       (good + 2, r"\[-1, 1\]"), (good.long(), "floating"),
                       (good.clone().index_fill_(0, torch.tensor([1]), float("nan")), "NaN")]:
        with pytest.raises(ValueError, match=match):
            tiny.encode(bad)
    with pytest.raises(TypeError, match="PIL"):
        tiny.encode([np.zeros((32, 32, 3))])
    codes = torch.zeros(1, 64, dtype=torch.long)
    for bad, match in [(codes + 256, "lie in"), (codes - 1, "lie in"), (codes[:, :10], "must be"),
                       (codes.float(), "integer")]:
        with pytest.raises(ValueError, match=match):
            tiny.decode(bad)


# ------------------------------------------------------------------------------------- HF / taming weights


def test_hf_chameleon_encoder_parity():
    transformers = pytest.importorskip("transformers")
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    hf_cfg = dict(resolution=32, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
                  attn_resolutions=[16], latent_channels=16, embed_dim=16, num_embeddings=64, in_channels=3)
    hf = ChameleonVQVAE(transformers.ChameleonVQVAEConfig(**hf_cfg)).eval()
    _randomize(hf, 1)
    ours = image_tokenizer_from_hf({"model.vqmodel." + k: v for k, v in hf.state_dict().items()}, hf_cfg)
    assert ours.decoder is None and ours.tokens_per_image == 256  # one downsample: 16x16
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = hf.encode(pixels).image_tokens.view(5, -1)
    assert len(expected.unique()) > 8  # a real test: many different codes
    assert torch.equal(ours.encode(pixels), expected)
    bare = image_tokenizer_from_hf(hf.state_dict(), hf_cfg)  # the VQVAE's own state dict
    assert torch.equal(bare.encode(pixels), expected)
    with pytest.raises(RuntimeError, match="no decoder"):
        ours.decode(expected)
    with pytest.raises(ValueError, match="missing"):
        image_tokenizer_from_hf({k: v for k, v in hf.state_dict().items() if "conv_in" not in k}, hf_cfg)


def test_from_pretrained_still_reads_hf_vq_an_older_convert_copied(tmp_path):
    transformers = pytest.importorskip("transformers")
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    from fusion.files import save_tensors, write_json

    hf_cfg = dict(resolution=32, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
                  latent_channels=16, embed_dim=16, num_embeddings=64)
    hf = ChameleonVQVAE(transformers.ChameleonVQVAEConfig(**hf_cfg)).eval()
    _randomize(hf, 3)
    save_tensors(tmp_path / "hf_vqmodel.safetensors", hf.state_dict())
    write_json(tmp_path / "hf_vq_config.json", hf_cfg)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = hf.encode(pixels).image_tokens.view(2, -1)
    with pytest.warns(DeprecationWarning, match="older `fusion convert`"):
        old = ImageTokenizer.from_pretrained(tmp_path)
    assert torch.equal(old.encode(pixels), expected)


def test_taming_naming_round_trip():
    torch.manual_seed(0)
    ours = ImageTokenizer(PLAIN)
    _randomize(ours, 4)
    taming = taming_state_dict(ours)
    assert "quantize.embedding.weight" in taming and taming["quantize.embedding.weight"].shape == (64, 16)
    assert "decoder.up.1.upsample.conv.weight" in taming and "encoder.down.0.downsample.conv.weight" in taming
    assert not any(k.startswith("quantize._codebook") for k in taming)
    ckpt = {"state_dict": {**taming, "loss.discriminator.main.0.weight": torch.zeros(1)}}
    back = image_tokenizer_from_taming(ckpt, PLAIN.to_taming())
    assert back.cfg == PLAIN
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    codes = ours.encode(pixels)
    assert torch.equal(codes, back.encode(pixels))
    assert torch.equal(ours.decode(codes), back.decode(codes))
    with pytest.raises(ValueError, match="Euclidean"):
        taming_state_dict(ImageTokenizer(VQConfig.preset("tiny", use_cosine_sim=True)))


def test_taming_yaml_file(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "vqgan.yaml"
    path.write_text(yaml.safe_dump(VQConfig.preset("chameleon").to_taming()))
    assert VQConfig.from_taming(path) == VQConfig.preset("chameleon")


# A taming ddconfig with down / up attention (at 16 px) and two levels, small enough for a CPU test.
DDCONFIG = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


def taming_vqgan(seed: int) -> tuple[dict[str, torch.Tensor], dict, object, object]:
    """A Lightning-style ``vqgan.ckpt`` dict built from the taming package's own Encoder / Decoder (random weights),
    its yaml dict, and those modules (the independent reference)."""
    models = pytest.importorskip(
        "taming.modules.diffusionmodules.model",
        reason="decoder parity needs taming-transformers-rom1504==0.0.6: pip install --no-deps "
               "taming-transformers-rom1504==0.0.6 (its declared deps pull a torchvision that breaks the pinned torch)")
    torch.manual_seed(seed)
    encoder, decoder = models.Encoder(**DDCONFIG).eval(), models.Decoder(**DDCONFIG).eval()
    _randomize(encoder, seed)
    _randomize(decoder, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in decoder.state_dict().items()},
             "quant_conv.weight": torch.randn(8, 16, 1, 1, generator=g) * 0.3,
             "quant_conv.bias": torch.randn(8, generator=g),
             "post_quant_conv.weight": torch.randn(16, 8, 1, 1, generator=g) * 0.3,
             "post_quant_conv.bias": torch.randn(16, generator=g),
             "quantize.embedding.weight": torch.randn(64, 8, generator=g),
             "loss.discriminator.main.0.weight": torch.zeros(1)}
    yaml_config = {"model": {"params": {"ddconfig": DDCONFIG, "n_embed": 64, "embed_dim": 8}}}
    return {"state_dict": state, "global_step": 7}, yaml_config, encoder, decoder


def test_vqgan_decoder_and_encoder_match_the_taming_package():
    ckpt, yaml_config, encoder, decoder = taming_vqgan(5)
    ours = image_tokenizer_from_taming(ckpt, yaml_config)
    assert ours.decoder is not None and ours.tokens_per_image == 256
    state = ckpt["state_dict"]
    codebook = state["quantize.embedding.weight"]
    codes = torch.randint(0, 64, (3, 256), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # taming's VQModel.decode: codebook rows -> post_quant_conv -> Decoder
        z = codebook[codes].view(3, 16, 16, 8).permute(0, 3, 1, 2)
        z = torch.nn.functional.conv2d(z, state["post_quant_conv.weight"], state["post_quant_conv.bias"])
        want = decoder(z).clamp(-1, 1)
    assert want.std() > 0.1  # a real picture, not a flat one
    torch.testing.assert_close(ours.decode(codes), want, atol=2e-5, rtol=1e-4)

    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():  # taming's encode: Encoder -> quant_conv -> nearest codebook row (fp64 here)
        h = torch.nn.functional.conv2d(encoder(pixels), state["quant_conv.weight"], state["quant_conv.bias"])
        flat = h.permute(0, 2, 3, 1).reshape(-1, 8).double()
        nearest = torch.cdist(flat, codebook.double()).argmin(-1).view(2, -1)
    assert len(nearest.unique()) > 8 and torch.equal(ours.encode(pixels), nearest)
