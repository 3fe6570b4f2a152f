"""fusion convert: the command, Hub ids, attaching a VQGAN decoder, and a real-size text -> image round trip."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import fusion
from fusion.cli.convert import main
from fusion.convert import attach_vqgan, convert
from fusion.inference.generate import generate_ids
from fusion.interop.taming import taming_state_dict

from .model.chameleon import VQ_CONFIG, decoder_state, hf_model, vocabulary_map, write_text_tokenizer

RELEASED = dict(size=65536, codes=range(4, 8196), boi=8197, eoi=8196)  # Chameleon / Anole's layout, as published
REAL_VQ = dict(embed_dim=256, num_embeddings=8192, latent_channels=256, resolution=512, base_channels=128,
               channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[], in_channels=3)


def taming_yaml(vq: dict) -> dict:
    dd = dict(double_z=False, z_channels=vq["latent_channels"], resolution=vq["resolution"], in_channels=3, out_ch=3,
              ch=vq["base_channels"], ch_mult=vq["channel_multiplier"], num_res_blocks=vq["num_res_blocks"],
              attn_resolutions=[], dropout=0.0)
    return {"model": {"params": {"embed_dim": vq["embed_dim"], "n_embed": vq["num_embeddings"], "ddconfig": dd}}}


def hf_chameleon_folder(tmp_path):
    hf = hf_model(seed=2)
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    write_text_tokenizer(src / "tokenizer.json", vocabulary_map())
    return hf, src


def vqgan_files(tmp_path, hf, codebook: torch.Tensor | None = None, yaml_config: dict | None = None):
    """Meta-style vqgan.ckpt + vqgan.yaml holding HF's encoder (or another ``codebook``) and a decoder."""
    vq = {k.removeprefix("model.vqmodel."): v for k, v in hf.state_dict().items() if k.startswith("model.vqmodel.")}
    if codebook is not None:
        vq["quantize.embedding.weight"] = codebook
    vq.update(decoder_state(VQ_CONFIG, seed=5))
    tmp_path.mkdir(exist_ok=True)
    torch.save({"state_dict": vq, "epoch": 1}, tmp_path / "vqgan.ckpt")
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(yaml_config or taming_yaml(VQ_CONFIG)))
    return tmp_path / "vqgan.ckpt", tmp_path / "vqgan.yaml"


def test_hub_ids_and_missing_folders_get_clear_errors(tmp_path, capsys):
    hint = r"download it first with `huggingface-cli download facebook/chameleon-7b --local-dir chameleon-7b`, then"
    with pytest.raises(FileNotFoundError, match=hint):
        main(["facebook/chameleon-7b", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        convert(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an HF Chameleon"):
        convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--vqgan", "x.ckpt"])  # the yaml must come with it
    assert "--vqgan-config" in capsys.readouterr().err


def test_vqgan_attaches_a_decoder_to_a_converted_chameleon(tmp_path):
    hf, src = hf_chameleon_folder(tmp_path)
    ckpt, cfg = vqgan_files(tmp_path / "vq", hf)
    assert main([str(src), str(tmp_path / "plain")]) == 0
    model = fusion.load(tmp_path / "plain", device="cpu")
    assert model.tokenizer.image.decoder is None
    want = model.generate("tok30 tok31", mode="text", max_new_tokens=6, do_sample=False)

    assert main([str(tmp_path / "plain"), "--vqgan", str(ckpt), "--vqgan-config", str(cfg)]) == 0  # in place
    model = fusion.load(tmp_path / "plain", device="cpu")
    decoder = decoder_state(VQ_CONFIG, seed=5)
    ours = taming_state_dict(model.tokenizer.image)
    assert all(torch.equal(ours[k], v) for k, v in decoder.items())
    assert model.generate("tok30 tok31", mode="text", max_new_tokens=6, do_sample=False) == want  # LM untouched
    doc = model.generate("tok30 tok31", mode="image", seed=1)
    assert len(doc.images) == 1 and doc.images[0].size == (16, 16)

    # or in one command, with the codebook as an HF release stores it (bf16) against Meta's fp32 copy
    hf_bf16 = {k: v.bfloat16() if "vqmodel.quantize" in k else v for k, v in load_file(
        str(src / "model.safetensors")).items()}
    save_file(hf_bf16, str(src / "model.safetensors"))
    assert main([str(src), str(tmp_path / "both"), "--vqgan", str(ckpt), "--vqgan-config", str(cfg)]) == 0
    assert fusion.load(tmp_path / "both", device="cpu").generate("tok30 tok31", mode="image", seed=1) == doc


def test_a_vqgan_whose_codebook_differs_is_refused(tmp_path):
    hf, src = hf_chameleon_folder(tmp_path)
    dst = convert(src, tmp_path / "plain")
    before = {name: (dst / name).read_bytes() for name in ("vq.json", "vq.safetensors")}
    codebook = hf.model.vqmodel.quantize.embedding.weight.detach().clone()
    codebook[3] += 0.05
    with pytest.raises(ValueError, match=r"codebook differs .*code 3"):
        attach_vqgan(dst, *vqgan_files(tmp_path / "a", hf, codebook))
    with pytest.raises(ValueError, match="codebook of 32 x 8"):
        attach_vqgan(dst, *vqgan_files(tmp_path / "b", hf, torch.randn(32, 8),
                                       taming_yaml({**VQ_CONFIG, "num_embeddings": 32})))
    smaller = taming_yaml({**VQ_CONFIG, "resolution": 8})
    with pytest.raises(ValueError, match="16 codes per image, the folder's encoder makes 64"):
        attach_vqgan(dst, *vqgan_files(tmp_path / "c", hf, yaml_config=smaller))
    assert {name: (dst / name).read_bytes() for name in before} == before  # left as it was


def test_real_size_text_to_image_round_trip(tmp_path):
    """The released vocabulary layout (65,536 ids, codes at 4..8195) and Chameleon's real VQGAN (512 px, 1024
    codes, 8192 x 256 codebook, decoder included; random weights) behind a scaled-down LM, as an HF Anole folder."""
    from fusion.interop.hf_chameleon import vocabulary_map as released_map

    vmap = released_map()
    hf = hf_model(seed=0, vq_config=REAL_VQ, vmap=vmap, hidden=32, layers=1, ffn=64, n_heads=2, n_kv_heads=2,
                  context=1100)
    src = tmp_path / "anole"
    hf.to(torch.bfloat16).save_pretrained(src)  # as HF releases are stored
    state = load_file(str(src / "model.safetensors"))
    state.update({"model.vqmodel." + k: v.bfloat16() for k, v in decoder_state(REAL_VQ, seed=1).items()})
    save_file(state, str(src / "model.safetensors"))
    write_text_tokenizer(src / "tokenizer.json", vmap)
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 2}))

    model = fusion.load(convert(src, tmp_path / "fusion"), device="cpu", dtype=torch.float32)
    vocab, tok = model.model.cfg.vocab, model.tokenizer
    assert (vocab.size, vocab.image_start, vocab.image_count, vocab.boi_id, vocab.eoi_id) == (
        RELEASED["size"], RELEASED["codes"].start, len(RELEASED["codes"]), RELEASED["boi"], RELEASED["eoi"])
    assert tok.tokens_per_image == 1024 and tok.image.resolution == 512

    prompt = tok.encode_batch([fusion.Document.of("tok9000 tok9001")], bos=True, eos=False)
    assert prompt[0].tolist() == [0, 9000, 9001]  # bos, then HF's tokenizer.json ids
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1025 steps of tiny ops: intra-op threads only fight each other on a shared CPU
    try:
        (ids,) = generate_ids(model.model, prompt, model.generation_config, tokens_per_image=1024, mode="image",
                              seed=3, max_new_tokens=1025)
    finally:
        torch.set_num_threads(threads)
    assert len(ids) == 1026 and ids[0] == RELEASED["boi"] and ids[-1] == RELEASED["eoi"]
    assert all(int(i) in RELEASED["codes"] for i in ids[1:-1])
    doc = tok.decode(ids)  # what Fusion.generate returns for these ids (one 512 px decode: ~8 s on 2 CPU cores)
    assert not doc.texts and len(doc.images) == 1 and doc.images[0].size == (512, 512)
    assert len(np.unique(np.asarray(doc.images[0]).reshape(-1, 3), axis=0)) > 100  # a picture, not a flat fill
