"""Logit parity with HF transformers' Chameleon after convert_hf_chameleon (the import is the product)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion.model.hf_chameleon import (
    convert_hf_chameleon,
    hf_to_fusion_state,
    model_config_from_hf,
    vocab_from_hf_config,
)
from fusion.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

N_IMAGE, VOCAB, IMAGE_START = 16, 300, 4
BOI, EOI, IMAGE_PLACEHOLDER = 251, 250, 252


def image_token_name(code: int) -> str:
    """Chameleon's spelling: digits as letters A..J, then one trailing char (HF drops it)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(code)) + "Z"


def vocabulary_map() -> dict[str, int]:
    vmap = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vmap.update({image_token_name(c): IMAGE_START + c for c in range(N_IMAGE)})
    vmap.update({f"tok{i}": i for i in range(IMAGE_START + N_IMAGE, VOCAB)})
    vmap.update({"<eoss>": EOI, "<racm3:break>": BOI, "<image>": IMAGE_PLACEHOLDER})
    return vmap


def hf_model(swin_norm: bool, seed: int = 0):
    cfg = transformers.ChameleonConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 5000.0},
        swin_norm=swin_norm, pad_token_id=1, bos_token_id=0, eos_token_id=2, vocabulary_map=vocabulary_map(),
        vq_config=dict(embed_dim=8, num_embeddings=N_IMAGE, latent_channels=8, resolution=16, base_channels=32,
                       channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[]))
    torch.manual_seed(seed)
    model = transformers.ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF inits norms to ones / zeros: randomise everything so a mix-up cannot hide
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(offset + (0.3 if "norm" in name else 0.1) * torch.randn_like(p))
    return model


def hf_folder(tmp_path, swin_norm: bool, **save_kwargs):
    model = hf_model(swin_norm)
    src = tmp_path / "hf"
    model.save_pretrained(src, **save_kwargs)
    (src / "tokenizer.json").write_text('{"model": "stand-in"}')
    return model, src


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    text = torch.randint(IMAGE_START + N_IMAGE, 250, (2, 12), generator=g)
    codes = torch.randint(0, N_IMAGE, (2, 8), generator=g)
    image = torch.cat([text[:, :3], torch.full((2, 1), BOI), IMAGE_START + codes, torch.full((2, 1), EOI),
                       text[:, 3:6]], 1)
    return {"text": text, "image": image}


@pytest.mark.parametrize("swin_norm", [False, True])
def test_converted_logits_match_transformers(tmp_path, swin_norm):
    hf, src = hf_folder(tmp_path, swin_norm)
    ours = Transformer.from_pretrained(convert_hf_chameleon(src, tmp_path / "fusion")).eval()
    assert ours.cfg.swin_norm == swin_norm and ours.cfg.rope_theta == 5000.0
    image_cols = torch.arange(IMAGE_START, IMAGE_START + N_IMAGE)
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[image_cols] = False
    for kind, ids in inputs().items():
        with torch.no_grad():
            want = hf(input_ids=ids).logits
            got = ours(ids)
        # HF forbids sampling raw image tokens by setting their logits to the dtype minimum; fusion does
        # not (it generates images with its own masks), so compare every other column.
        assert bool((want[..., image_cols] == torch.finfo(want.dtype).min).all())
        torch.testing.assert_close(got[..., keep], want[..., keep], atol=1e-4, rtol=1e-4, msg=kind)


def test_conversion_keeps_chameleons_vocab_vq_and_tokenizer(tmp_path):
    hf, src = hf_folder(tmp_path, swin_norm=False)
    dst = convert_hf_chameleon(src, tmp_path / "fusion")
    vocab = Transformer.from_pretrained(dst).cfg.vocab
    assert (vocab.size, vocab.image_start, vocab.image_count) == (VOCAB, IMAGE_START, N_IMAGE)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.boi_id, vocab.eoi_id) == (1, 0, 2, BOI, EOI)
    assert (vocab.text_start, vocab.text_count) == (0, VOCAB)
    # the image ids agree with HF's own mapping from VQ codes to BPE ids
    codes = torch.arange(N_IMAGE)
    assert torch.equal(vocab.image_ids(codes), hf.model.vocabulary_mapping.convert_img2bpe(codes).long())
    vq = load_file(str(dst / "hf_vqmodel.safetensors"))
    hf_vq = hf.model.vqmodel.state_dict()
    assert vq.keys() == hf_vq.keys() and all(torch.equal(vq[k], hf_vq[k]) for k in vq)
    assert json.loads((dst / "hf_vq_config.json").read_text())["num_embeddings"] == N_IMAGE
    assert (dst / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()


def test_sharded_and_fused_qkv_checkpoints_convert_to_the_same_weights(tmp_path):
    _, src = hf_folder(tmp_path, swin_norm=False)
    want = load_file(str(convert_hf_chameleon(src, tmp_path / "plain") / "model.safetensors"))

    sharded = tmp_path / "sharded"
    hf_model(swin_norm=False).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    got = load_file(str(convert_hf_chameleon(sharded, tmp_path / "out1") / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    state = load_file(str(src / "model.safetensors"))
    for i in range(2):
        p = f"model.layers.{i}.self_attn."
        state[p + "qkv_proj.weight"] = torch.cat([state.pop(p + f"{n}_proj.weight") for n in "qkv"])
    fused = tmp_path / "fused"
    fused.mkdir()
    save_file(state, str(fused / "model.safetensors"))
    (fused / "config.json").write_text((src / "config.json").read_text())
    got = load_file(str(convert_hf_chameleon(fused, tmp_path / "out2") / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_missing_and_extra_tensors_are_named(tmp_path):
    _, src = hf_folder(tmp_path, swin_norm=False)
    hf_cfg = json.loads((src / "config.json").read_text())
    cfg = model_config_from_hf(hf_cfg)
    state = load_file(str(src / "model.safetensors"))
    state.pop("model.layers.1.self_attn.k_norm.weight")
    state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.self_attn.k_norm.weight'\], "
                                         r"unexpected \['model.layers.7.mlp.up_proj.weight'\]"):
        hf_to_fusion_state(state, cfg)


def test_unsupported_vocab_layouts_and_configs_are_refused():
    base = {"vocab_size": VOCAB, "vocabulary_map": vocabulary_map(), "pad_token_id": 1, "bos_token_id": 0,
            "eos_token_id": 2}
    scrambled = dict(base["vocabulary_map"])
    scrambled[image_token_name(0)], scrambled[image_token_name(1)] = IMAGE_START + 1, IMAGE_START
    with pytest.raises(ValueError, match="contiguous"):
        vocab_from_hf_config({**base, "vocabulary_map": scrambled})
    no_boi = {k: v for k, v in base["vocabulary_map"].items() if k != "<racm3:break>"}
    with pytest.raises(ValueError, match="racm3"):
        vocab_from_hf_config({**base, "vocabulary_map": no_boi})
    with pytest.raises(ValueError, match="attention_bias"):
        model_config_from_hf({**base, "attention_bias": True})
    with pytest.raises(ValueError, match="rope type 'linear'"):
        model_config_from_hf({**base, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})


def test_converted_folder_loads_as_a_whole_checkpoint(tmp_path):
    """fusion.load on a converted folder: HF's tokenizer.json for text, HF's VQ encoder for images."""
    from PIL import Image as PILImage
    from tokenizers import Tokenizer, models, pre_tokenizers

    from fusion.api import Fusion
    from fusion.document import Document

    hf, src = hf_folder(tmp_path, swin_norm=False)
    tk = Tokenizer(models.WordLevel(vocab=vocabulary_map(), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.save(str(src / "tokenizer.json"))
    loaded = Fusion.from_pretrained(convert_hf_chameleon(src, tmp_path / "fusion"), device="cpu")
    model, tok = loaded.model, loaded.tokenizer

    picture = PILImage.new("RGB", (20, 16), (200, 40, 90))
    ids = tok.encode(Document.of("tok30 tok31", picture, "tok40"))
    n = tok.tokens_per_image
    assert ids[:3].tolist() == [0, 30, 31] and ids[3] == BOI and ids[4 + n] == EOI
    assert ids[-2:].tolist() == [40, 2]
    # the image ids are what HF's own VQ encoder and vocabulary mapping give for the same pixels
    with torch.no_grad():
        want = hf.model.get_image_tokens(tok.image.preprocess([picture]))
    assert torch.equal(ids[4:4 + n], want.reshape(-1).long())
    assert model.cfg.vocab == tok.vocab
    with pytest.raises(RuntimeError, match="no decoder"):
        tok.decode(ids)
