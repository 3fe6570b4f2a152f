"""Test fixtures in the released Chameleon / Anole layouts, built from HF transformers' own model (never from fusion's
conversion code): a small vocabulary map, a random HF model, an HF-format Anole VQ decoder, a text tokenizer file."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

N_IMAGE, VOCAB, IMAGE_START = 16, 300, 4
BOI, EOI, IMAGE_PLACEHOLDER = 251, 250, 252
# HF's ChameleonVQVAEConfig spelling; 16 px -> one downsample -> 8 x 8 = 64 codes per image
VQ_CONFIG = dict(embed_dim=8, num_embeddings=N_IMAGE, latent_channels=8, resolution=16, base_channels=32,
                 channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[], in_channels=3, out_channels=3)


def image_token_name(code: int) -> str:
    """Chameleon's spelling: digits as letters A..J, then one trailing char (HF drops it)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(code)) + "Z"


def vocabulary_map() -> dict[str, int]:
    vmap = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vmap.update({image_token_name(c): IMAGE_START + c for c in range(N_IMAGE)})
    vmap.update({f"tok{i}": i for i in range(IMAGE_START + N_IMAGE, VOCAB) if i not in (BOI, EOI, IMAGE_PLACEHOLDER)})
    vmap.update({"<eoss>": EOI, "<racm3:break>": BOI, "<image>": IMAGE_PLACEHOLDER})
    return vmap


def hf_model(swin_norm: bool = False, seed: int = 0, *, n_heads: int = 4, n_kv_heads: int = 2,
             vq_config: dict | None = None, vmap: dict[str, int] | None = None, hidden: int = 64, layers: int = 2,
             ffn: int = 128, context: int = 128):
    """A random HF ``ChameleonForConditionalGeneration``; every weight random (norms around 1) so no mix-up hides."""
    vmap = vmap or vocabulary_map()
    cfg = transformers.ChameleonConfig(
        vocab_size=max(vmap.values()) + 1, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, swin_norm=swin_norm, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, vocabulary_map=vmap, vq_config=vq_config or VQ_CONFIG)
    torch.manual_seed(seed)
    model = transformers.ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(offset + (0.3 if "norm" in name else 0.1) * torch.randn_like(p))
    return model


def decoder_state(vq_config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a taming VQGAN decoder for ``vq_config`` (HF spelling), under taming's names.

    Names and shapes are spelt out by fusion's own ``Decoder``, whose names and maths
    tests/tokenizers/test_image.py checks against the taming package's.
    """
    from fusion.tokenizers.vq_config import VQConfig
    from fusion.tokenizers.vqgan import Decoder

    module = Decoder(VQConfig.from_hf(vq_config, decoder=True))
    g = torch.Generator().manual_seed(seed)
    return {f"decoder.{k}": (1.0 if "norm" in k and k.endswith("weight") else 0.0)
            + 0.1 * torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


def write_text_tokenizer(path, vmap: dict[str, int]) -> None:
    """An HF ``tokenizers`` file over ``vmap`` (Chameleon's is a BPE whose vocabulary holds the image tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel(vocab=vmap, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.save(str(path))


def inputs() -> dict[str, torch.Tensor]:
    """Text-only and text + image id sequences in the small layout."""
    g = torch.Generator().manual_seed(5)
    text = torch.randint(IMAGE_START + N_IMAGE, 250, (2, 12), generator=g)
    codes = torch.randint(0, N_IMAGE, (2, 8), generator=g)
    image = torch.cat([text[:, :3], torch.full((2, 1), BOI), IMAGE_START + codes, torch.full((2, 1), EOI),
                       text[:, 3:6]], 1)
    return {"text": text, "image": image}


def assert_logits_match(hf, ours) -> None:
    """fusion's logits equal HF's on text and image inputs (HF pins image-token logits to the dtype minimum)."""
    image_cols = torch.arange(IMAGE_START, IMAGE_START + N_IMAGE)
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[image_cols] = False
    for kind, ids in inputs().items():
        with torch.no_grad():
            want = hf(input_ids=ids).logits
            got = ours(ids)
        assert bool((want[..., image_cols] == torch.finfo(want.dtype).min).all())
        torch.testing.assert_close(got[..., keep], want[..., keep], atol=1e-4, rtol=1e-4, msg=kind)
