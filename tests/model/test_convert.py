"""Logit parity with HF transformers' Chameleon after convert_hf_chameleon (the import is the product)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion.api import Fusion
from fusion.document import Document
from fusion.interop.hf_chameleon import (
    convert_hf_chameleon,
    hf_to_fusion_state,
    model_config_from_hf,
    vocab_from_hf_config,
)
from fusion.interop.taming import taming_state_dict
from fusion.model.transformer import Transformer
from fusion.tokenizers.image import ImageTokenizer

from .chameleon import (
    BOI,
    EOI,
    IMAGE_START,
    N_IMAGE,
    VOCAB,
    VQ_CONFIG,
    assert_logits_match,
    decoder_state,
    hf_model,
    image_token_name,
    vocabulary_map,
    write_text_tokenizer,
)


def hf_folder(tmp_path, swin_norm: bool, **save_kwargs):
    model = hf_model(swin_norm)
    src = tmp_path / "hf"
    model.save_pretrained(src, **save_kwargs)
    (src / "tokenizer.json").write_text('{"model": "stand-in"}')
    return model, src


@pytest.mark.parametrize("swin_norm", [False, True])
def test_converted_logits_match_transformers(tmp_path, swin_norm):
    hf, src = hf_folder(tmp_path, swin_norm)
    ours = Transformer.from_pretrained(convert_hf_chameleon(src, tmp_path / "fusion")).eval()
    assert ours.cfg.swin_norm == swin_norm and ours.cfg.rope_theta == 5000.0
    assert_logits_match(hf, ours)


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
    assert not (dst / "hf_vqmodel.safetensors").exists()  # the VQ as fusion's own files, every tensor kept
    vq = taming_state_dict(ImageTokenizer.from_pretrained(dst))
    hf_vq = hf.model.vqmodel.state_dict()
    assert vq.keys() == hf_vq.keys() and all(torch.equal(vq[k], hf_vq[k]) for k in vq)
    assert json.loads((dst / "vq.json").read_text())["num_embeddings"] == N_IMAGE
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

    hf, src = hf_folder(tmp_path, swin_norm=False)
    write_text_tokenizer(src / "tokenizer.json", vocabulary_map())
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
    with pytest.raises(ValueError, match="--vqgan"):  # the error says how to get a decoder
        loaded.generate("tok30", mode="image")


def test_hf_format_anole_gets_its_decoder_and_generates_images(tmp_path):
    """An HF-format Anole folder: taming's decoder.* beside the encoder under model.vqmodel."""
    hf, src = hf_folder(tmp_path, swin_norm=False)
    write_text_tokenizer(src / "tokenizer.json", vocabulary_map())
    state = load_file(str(src / "model.safetensors"))
    decoder = decoder_state(VQ_CONFIG, seed=3)
    save_file({**state, **{"model.vqmodel." + k: v for k, v in decoder.items()}}, str(src / "model.safetensors"))
    dst = convert_hf_chameleon(src, tmp_path / "fusion")
    assert (dst / "vq.json").is_file() and not (dst / "hf_vqmodel.safetensors").exists()

    loaded = Fusion.from_pretrained(dst, device="cpu")
    vq = loaded.tokenizer.image
    assert vq.decoder is not None
    ours = taming_state_dict(vq)
    assert all(torch.equal(ours[k], v) for k, v in decoder.items())  # every decoder tensor, by its name
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():  # the encoder is still HF's
        assert torch.equal(vq.encode(pixels) + IMAGE_START, hf.model.get_image_tokens(pixels).long())
    doc = loaded.generate("tok30 tok31", mode="image", seed=0)
    assert len(doc.images) == 1 and doc.images[0].size == (16, 16) and not doc.texts
    assert_logits_match(hf, loaded.model)


def test_hf_generation_config_is_translated_not_copied(tmp_path):
    hf, src = hf_folder(tmp_path, swin_norm=False)
    hf_gen = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "do_sample": True, "top_p": 0.9,
              "max_length": 4096, "transformers_version": "4.44.0"}
    (src / "generation_config.json").write_text(json.dumps(hf_gen))
    from fusion.convert import convert

    dst = convert(src, tmp_path / "fusion")
    saved = json.loads((dst / "generation_config.json").read_text())
    assert saved != hf_gen and "bos_token_id" not in saved and saved["top_p"] == 0.9
    write_text_tokenizer(dst / "tokenizer.json", vocabulary_map())
    assert Fusion.from_pretrained(dst, device="cpu").generation_config.top_p == 0.9
