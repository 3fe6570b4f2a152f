"""Meta's original release layout, written by this test from HF's weights with the test's own inverse permutation
(never fusion's helpers), then converted and compared with HF transformers' logits."""

import json

import numpy as np
import pytest
import torch
import yaml

from fusion.api import Fusion
from fusion.convert import convert
from fusion.interop.meta_chameleon import ffn_dim
from fusion.model.transformer import Transformer

from .chameleon import (
    IMAGE_START,
    VQ_CONFIG,
    assert_logits_match,
    decoder_state,
    hf_model,
    vocabulary_map,
    write_text_tokenizer,
)


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half rows (i, i + D/2) of each head -> Meta's RoPE pairs (2i, 2i + 1)."""
    d = w.shape[0] // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for i in range(d // 2):
            out[h * d + 2 * i], out[h * d + 2 * i + 1] = w[h * d + i], w[h * d + d // 2 + i]
    return out


def share_head_norms(hf, ranks: int) -> None:
    """Meta keeps one q / k norm vector per rank, shared by its heads: make HF's per-head norms so (in place)."""
    with torch.no_grad():
        for layer in hf.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                for p in (norm.weight, norm.bias):
                    per_rank = p.shape[0] // ranks
                    p.copy_(p[::per_rank].repeat_interleave(per_rank, 0))


def meta_shards(hf, ranks: int, fused: bool) -> list[dict[str, torch.Tensor]]:
    """HF weights in Meta's names, split over ``ranks`` model-parallel shards (column / row parallel)."""
    cfg, sd = hf.config, hf.state_dict()
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    shards = [{} for _ in range(ranks)]

    def put(name, t, dim=None):
        for r in range(ranks):
            shards[r][name] = t.clone() if dim is None else t.chunk(ranks, dim)[r].clone()

    put("tok_embeddings.weight", sd["model.embed_tokens.weight"], 1)
    put("norm.weight", sd["model.norm.weight"])
    put("output.weight", sd["lm_head.weight"], 0)
    for i in range(cfg.num_hidden_layers):
        p, m = f"layers.{i}.", f"model.layers.{i}."
        q = to_interleaved(sd[m + "self_attn.q_proj.weight"], n_heads)
        k = to_interleaved(sd[m + "self_attn.k_proj.weight"], n_kv)
        v = sd[m + "self_attn.v_proj.weight"]
        if fused:  # Meta's own module fuses them: [local q; local k; local v] per rank
            put(p + "attention.wqkv.weight", torch.cat([torch.cat([a.chunk(ranks)[r] for a in (q, k, v)])
                                                        for r in range(ranks)]), 0)
        else:
            put(p + "attention.wq.weight", q, 0)
            put(p + "attention.wk.weight", k, 0)
            put(p + "attention.wv.weight", v, 0)
        put(p + "attention.wo.weight", sd[m + "self_attn.o_proj.weight"], 1)
        put(p + "feed_forward.w1.weight", sd[m + "mlp.gate_proj.weight"], 0)
        put(p + "feed_forward.w3.weight", sd[m + "mlp.up_proj.weight"], 0)
        put(p + "feed_forward.w2.weight", sd[m + "mlp.down_proj.weight"], 1)
        put(p + "attention_norm.weight", sd[m + "input_layernorm.weight"])
        put(p + "ffn_norm.weight", sd[m + "post_attention_layernorm.weight"])
        for name, heads in (("q", n_heads), ("k", n_kv)):
            for part in ("weight", "bias"):
                rows = sd[m + f"self_attn.{name}_norm.{part}"]
                for r in range(ranks):  # rank r's one vector, back in interleaved order
                    shards[r][p + f"attention.{name}_normalization.{part}"] = to_interleaved(
                        rows[r * heads // ranks], 1)
    return shards


def write_release(root, hf, ranks: int = 1, fused: bool = False) -> None:
    """``root/models/7b/{params.json, consolidated*.pth}`` and ``root/tokenizer/{text_tokenizer.json, vqgan.*}``."""
    cfg = hf.config
    model_dir, tok_dir = root / "models" / "7b", root / "tokenizer"
    model_dir.mkdir(parents=True)
    tok_dir.mkdir()
    params = {"model": {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
                        "n_kv_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size, "multiple_of": 64,
                        "ffn_dim_multiplier": 0.75, "norm_eps": cfg.rms_norm_eps, "rope_theta": 5000.0,
                        "qk_normalization": True, "swin_norm": cfg.swin_norm, "max_seq_len": 128},
              "model_parallel_size": ranks}
    (model_dir / "params.json").write_text(json.dumps(params))
    shards = meta_shards(hf, ranks, fused)
    for r, shard in enumerate(shards):
        shard["rope.freqs"] = torch.randn(4)  # a cached table some releases carry
        torch.save(shard, model_dir / ("consolidated.pth" if ranks == 1 else f"consolidated.{r:02d}.pth"))
    write_text_tokenizer(tok_dir / "text_tokenizer.json", vocabulary_map())
    vq = {k.removeprefix("model.vqmodel."): v for k, v in hf.state_dict().items() if k.startswith("model.vqmodel.")}
    vq.update(decoder_state(VQ_CONFIG, seed=9))
    ckpt = {"state_dict": vq, "global_step": np.int64(1000), "epoch": 2, "pytorch-lightning_version": "1.0.8"}
    torch.save(ckpt, tok_dir / "vqgan.ckpt")
    dd = dict(double_z=False, z_channels=VQ_CONFIG["latent_channels"], resolution=VQ_CONFIG["resolution"],
              in_channels=3, out_ch=3, ch=VQ_CONFIG["base_channels"], ch_mult=VQ_CONFIG["channel_multiplier"],
              num_res_blocks=VQ_CONFIG["num_res_blocks"], attn_resolutions=[], dropout=0.0)
    (tok_dir / "vqgan.yaml").write_text(yaml.safe_dump({"model": {"params": {
        "embed_dim": VQ_CONFIG["embed_dim"], "n_embed": VQ_CONFIG["num_embeddings"], "ddconfig": dd}}}))


def test_ffn_width_follows_multiple_of():
    assert ffn_dim(4096, 256, None) == 11008  # Chameleon-7B, as HF's config says
    assert ffn_dim(8192, 256, 1.0) == 22016  # Chameleon-34B
    assert ffn_dim(64, 64, 0.75) == 128  # the fixture below: int(0.75 * 170) = 127 -> 128


@pytest.mark.parametrize("ranks,swin_norm,fused", [(1, False, True), (2, True, False)])
def test_meta_release_converts_to_hf_logits(tmp_path, ranks, swin_norm, fused):
    hf = hf_model(swin_norm, seed=ranks)
    share_head_norms(hf, ranks)
    write_release(tmp_path / "release", hf, ranks, fused)
    dst = convert(tmp_path / "release", tmp_path / "fusion")
    ours = Transformer.from_pretrained(dst)
    assert (ours.cfg.ffn_dim, ours.cfg.swin_norm, ours.cfg.n_kv_heads) == (128, swin_norm, 2)
    assert_logits_match(hf, ours)
    # the VQGAN came from vqgan.ckpt: HF's encoder codes, and a decoder, so the folder generates images
    loaded = Fusion.from_pretrained(dst, device="cpu")
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.tokenizer.image.encode(pixels) + IMAGE_START,
                           hf.model.get_image_tokens(pixels).long())
    doc = loaded.generate("tok30 tok31", mode="image", seed=0)
    assert len(doc.images) == 1 and doc.images[0].size == (16, 16)


def test_a_model_folder_of_the_release_converts_too_and_bad_releases_are_named(tmp_path):
    hf = hf_model(seed=3)
    share_head_norms(hf, 1)
    write_release(tmp_path / "release", hf)
    one = convert(tmp_path / "release" / "models" / "7b", tmp_path / "a")  # the model folder itself
    assert_logits_match(hf, Transformer.from_pretrained(one))

    (tmp_path / "release" / "models" / "30b").mkdir()
    (tmp_path / "release" / "models" / "30b" / "params.json").write_text("{}")
    with pytest.raises(ValueError, match="several models"):
        convert(tmp_path / "release", tmp_path / "b")
    shard = tmp_path / "release" / "models" / "7b" / "consolidated.pth"
    state = torch.load(shard, weights_only=True)
    state["layers.0.attention.wz.weight"] = torch.zeros(1)
    torch.save(state, shard)
    with pytest.raises(ValueError, match=r"unexpected tensors .*layers.0.attention.wz.weight"):
        convert(tmp_path / "release" / "models" / "7b", tmp_path / "c")
