"""HF transformers' Chameleon / Anole layout: its config, vocabulary map and weight names, and the import.

Chameleon's vocabulary layout is kept: a ``Vocab`` built from the HF config's ``vocabulary_map`` (image codes
are the ``IMGIMG...`` entries, contiguous at ids 4..8195 in the released models; every id counts as text). The
VQ is written as fusion's own ``vq.json`` + ``vq.safetensors`` (``taming.image_tokenizer_from_hf``): HF
Chameleon's is an encoder only; HF-format Anole checkpoints add taming's ``decoder.*`` under the same prefix, and
then the folder generates images. Tokenizer files are copied as they are (``fusion.convert`` translates HF's
``generation_config.json``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from fusion import checkpoint_layout as layout
from fusion.files import atomic_path, read_json, save_tensors, write_json
from fusion.interop.taming import HF_PREFIX as VQ_PREFIX
from fusion.interop.taming import image_tokenizer_from_hf
from fusion.model.config import ModelConfig
from fusion.vocab import Vocab

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json")
BOI_TOKEN, EOI_TOKEN = "<racm3:break>", "<eoss>"  # HF ChameleonProcessor's image start / end tokens
IMAGE_PREFIX = "IMGIMG"
# The released Chameleon / Anole models: 65,536 ids, the 8192 image codes at 4..8195.
RELEASED = dict(size=65536, n_image=8192, image_start=4, boi=8197, eoi=8196)

# fusion name <- HF name, per layer (after "model.layers.{i}.") and global.
LAYER_MAP = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.q_norm.bias": "self_attn.q_norm.bias",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn.k_norm.bias": "self_attn.k_norm.bias",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
}
GLOBAL_MAP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


# ------------------------------------------------------------------ config


def image_token_name(code: int) -> str:
    """Chameleon's spelling of image code ``code``: 'IMGIMG', its digits as letters A..J, one trailing 'Z'."""
    return IMAGE_PREFIX + "".join(chr(ord("A") + int(c)) for c in str(code)) + "Z"


def vocabulary_map(size: int = RELEASED["size"], n_image: int = RELEASED["n_image"], *,
                   image_start: int = RELEASED["image_start"], boi: int = RELEASED["boi"],
                   eoi: int = RELEASED["eoi"]) -> dict[str, int]:
    """An HF ``vocabulary_map`` in Chameleon's layout (the released models' by default; smaller for tests):
    ``<s> <pad> </s> <unk>`` at 0..3, the image tokens from ``image_start``, boi / eoi, ``tok{i}`` elsewhere."""
    vmap = {f"tok{i}": i for i in range(size)}
    vmap.update({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, BOI_TOKEN: boi, EOI_TOKEN: eoi})
    vmap.update({image_token_name(c): image_start + c for c in range(n_image)})
    taken = set(range(image_start, image_start + n_image)) | {0, 1, 2, 3, boi, eoi}
    return {name: i for name, i in vmap.items() if not (name.startswith("tok") and i in taken)}


def image_code_of(name: str) -> int:
    """HF ``ChameleonImageVocabularyMapping``: 'IMGIMG' + digits spelt A..J + one trailing char -> code."""
    return int("".join(str(ord(c) - ord("A")) if "A" <= c <= "J" else c for c in name[len(IMAGE_PREFIX):-1]))


def vocab_from_hf_config(hf: dict) -> Vocab:
    """Chameleon's layout as a ``Vocab``; image codes must be contiguous ids in code order (one add apart)."""
    vmap = hf.get("vocabulary_map")
    if not vmap:
        raise ValueError("HF config has no vocabulary_map; cannot locate image tokens")
    image = sorted((int(i), image_code_of(name)) for name, i in vmap.items() if name.startswith(IMAGE_PREFIX))
    if not image:
        raise ValueError(f"vocabulary_map has no {IMAGE_PREFIX}... image tokens")
    start = image[0][0]
    if any(i != start + k or code != k for k, (i, code) in enumerate(image)):
        raise ValueError("image tokens are not contiguous ids start + code; fusion's Vocab needs that layout")

    def special(token: str, config_key: str | None = None) -> int:
        value = hf.get(config_key) if config_key else None
        if value is None:
            value = vmap.get(token)
        if value is None:
            raise ValueError(f"cannot find {token!r} in vocabulary_map (nor config key {config_key})")
        return int(value[0] if isinstance(value, list) else value)

    size = int(hf["vocab_size"])
    return Vocab(size=size, text_start=0, text_count=size, image_start=start, image_count=len(image),
                 pad_id=special("<pad>", "pad_token_id"), bos_id=special("<s>", "bos_token_id"),
                 eos_id=special("</s>", "eos_token_id"), boi_id=special(BOI_TOKEN), eoi_id=special(EOI_TOKEN))


def model_config_from_hf(hf: dict) -> ModelConfig:
    """Map a HF ChameleonConfig dict (transformers v4 or v5 spelling) to ``ModelConfig``; refuse what we lack."""
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"HF config sets {key}=true; fusion's decoder has no biases there")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported (SwiGLU needs silu)")
    rope = hf.get("rope_parameters") or {}
    scaling = rope.get("rope_type") or (hf.get("rope_scaling") or {}).get("rope_type") or "default"
    if scaling != "default":
        raise ValueError(f"rope type {scaling!r} is not supported (default rotary only)")
    vocab = vocab_from_hf_config(hf)
    n_img = (hf.get("vq_config") or {}).get("num_embeddings")
    if n_img is not None and n_img != vocab.image_count:
        raise ValueError(f"vocabulary_map has {vocab.image_count} image tokens but the VQ codebook has {n_img}")
    n_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab=vocab, dim=int(hf["hidden_size"]), n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), ffn_dim=int(hf["intermediate_size"]),
        max_seq_len=int(hf["max_position_embeddings"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)), qk_norm=True, swin_norm=bool(hf.get("swin_norm", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dropout=0.0)


# ------------------------------------------------------------------ weights


def load_hf_state_dict(src_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a HF folder: ``model.safetensors``, or the shards named by its index json."""
    src = Path(src_dir)
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({src / f for f in read_json(index)["weight_map"].values()})
    else:
        files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src}: no safetensors weights found")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def _split_fused_qkv(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Expand ``self_attn.qkv_proj.weight`` (q, k, v stacked on rows) into separate q/k/v, in place."""
    sizes = [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    for key in [k for k in hf_state if k.endswith("self_attn.qkv_proj.weight")]:
        fused = hf_state.pop(key)
        if fused.shape[0] != sum(sizes):
            raise ValueError(f"{key}: {fused.shape[0]} rows, expected q+k+v = {sum(sizes)}")
        for name, part in zip("qkv", fused.split(sizes), strict=True):
            hf_state[key.replace("qkv_proj", f"{name}_proj")] = part


def hf_to_fusion_state(hf_state: dict[str, torch.Tensor],
                       cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder tensors under fusion names, VQ tensors with ``model.vqmodel.`` stripped)."""
    hf_state = dict(hf_state)
    _split_fused_qkv(hf_state, cfg)
    names = dict(GLOBAL_MAP)
    for i in range(cfg.n_layers):
        names.update({f"layers.{i}.{ours}": f"model.layers.{i}.{hf}" for ours, hf in LAYER_MAP.items()})
    if cfg.tie_embeddings:
        del names["lm_head.weight"]
        hf_state.pop("lm_head.weight", None)  # some savers write the tied copy anyway
    missing = sorted(hf for hf in names.values() if hf not in hf_state)
    vq = {k[len(VQ_PREFIX):]: v for k, v in hf_state.items() if k.startswith(VQ_PREFIX)}
    extra = sorted(set(hf_state) - set(names.values()) - {VQ_PREFIX + k for k in vq})
    if missing or extra:
        raise ValueError(f"HF checkpoint does not match its config: missing {missing}, unexpected {extra}")
    return {ours: hf_state[hf] for ours, hf in names.items()}, vq


# ------------------------------------------------------------------ folder


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _write_vq(vq: dict[str, torch.Tensor], vq_config: dict | None, dst: Path) -> None:
    """The VQ as fusion's own files: HF Chameleon's encoder only, or Anole's with its decoder."""
    if bool(vq) != bool(vq_config):
        raise ValueError(f"HF checkpoint has {'VQ weights but no vq_config' if vq else 'a vq_config but no VQ weights'}"
                         f" ({VQ_PREFIX}*)")
    if vq:
        image_tokenizer_from_hf(vq, vq_config).save_pretrained(dst)


def convert_hf_chameleon(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """HF Chameleon/Anole folder -> fusion folder (config.json, model.safetensors, VQ + tokenizer files)."""
    src, dst = Path(src_dir), Path(dst_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: config.json is missing; expected a HF Chameleon folder")
    hf = read_json(src / "config.json")
    if hf.get("model_type", "chameleon") != "chameleon":
        raise ValueError(f"{src}: model_type={hf['model_type']!r}, expected 'chameleon'")
    cfg = model_config_from_hf(hf)
    state, vq = hf_to_fusion_state(load_hf_state_dict(src), cfg)
    dst.mkdir(parents=True, exist_ok=True)
    save_tensors(dst / layout.MODEL_WEIGHTS, state)
    _write_vq(vq, hf.get("vq_config"), dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            _copy(src / name, dst / name)
    write_json(dst / layout.MODEL_CONFIG, cfg.to_dict())  # last: a folder with config.json is complete
    return dst


def released_vocab() -> Vocab:
    """The released Chameleon / Anole models' id layout as a ``Vocab`` (for random models of their shape)."""
    return vocab_from_hf_config({"vocab_size": RELEASED["size"], "vocabulary_map": vocabulary_map()})
