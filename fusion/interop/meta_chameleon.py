"""Meta's original Chameleon / Anole release: its folder, config, weight names and shards, and the import.

A release holds ``models/<size>/params.json`` + ``consolidated.pth`` (or ``consolidated.00.pth`` ... one shard per
model-parallel rank), and ``tokenizer/text_tokenizer.json`` (an HF ``tokenizers`` file whose vocabulary holds the
``IMGIMG...`` image tokens) + ``tokenizer/vqgan.ckpt`` / ``vqgan.yaml`` (the VQGAN, decoder included). Weights are
read with ``torch.load(weights_only=True)``. Meta's attention rotates interleaved pairs (2i, 2i+1); fusion's, as
HF's, rotates halves (i, i + D/2), so the rows of wq / wk and the q / k norm vectors are permuted per head.
Shards join on the model-parallel axis: column-parallel weights (wq, wk, wv, w1, w3, output) on rows, row-parallel
ones (wo, w2) and the embedding on columns; RMSNorms are replicated; each rank has its own q / k norm vector,
shared by its heads.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from fusion import checkpoint_layout as layout
from fusion.files import atomic_path, read_json, save_tensors, write_json
from fusion.interop.hf_chameleon import vocab_from_hf_config
from fusion.interop.taming import image_tokenizer_from_taming
from fusion.model.config import ModelConfig
from fusion.vocab import Vocab

CONTEXT, LONG_CONTEXT = 4096, 16384  # Chameleon's context; HF gives models with rope_theta > 1e4 the long one
COLUMN_PARALLEL = {"feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight"}
ROW_PARALLEL = {"attention.wo.weight": "attn.o_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight"}
REPLICATED = {"attention_norm.weight": "attn_norm.weight", "ffn_norm.weight": "mlp_norm.weight"}
IGNORED = ("rope.freqs",)  # a cached RoPE table some releases carry
LAYER_KEY = re.compile(r"layers\.(\d+)\.(attention\.(wq|wk|wv|wqkv|wo)\.weight|attention\.[qk]_normalization\."
                       r"(weight|bias)|feed_forward\.(w1|w2|w3|w13)\.weight|(attention|ffn)_norm\.weight)")
GLOBAL_KEYS = ("tok_embeddings.weight", "norm.weight", "output.weight", *IGNORED)


# ------------------------------------------------------------------ folder and config


def find_model_dir(src: Path) -> Path | None:
    """The folder holding ``params.json``: ``src`` itself or its single ``models/<size>/``; None if neither."""
    if (src / layout.META_PARAMS).is_file():
        return src
    found = sorted(p.parent for p in src.glob(f"models/*/{layout.META_PARAMS}"))
    if len(found) > 1:
        raise ValueError(f"{src} holds several models ({', '.join(p.name for p in found)}); pass one folder, "
                         f"e.g. {found[0]}")
    return found[0] if found else None


def find_tokenizer_dir(model_dir: Path) -> Path:
    """The release's ``tokenizer/`` folder: beside ``models/`` (the release layout) or inside the model folder."""
    for cand in (model_dir / layout.META_TOKENIZER_DIR, model_dir.parent.parent / layout.META_TOKENIZER_DIR,
                 model_dir.parent / layout.META_TOKENIZER_DIR):
        if (cand / layout.META_TEXT_TOKENIZER).is_file():
            return cand
    raise FileNotFoundError(f"{model_dir}: no {layout.META_TOKENIZER_DIR}/{layout.META_TEXT_TOKENIZER} beside "
                            "models/ (Meta's release layout) nor inside the model folder")


def read_params(model_dir: Path) -> dict:
    """``params.json`` flattened as Meta's loader does: top level, its ``model`` part, ``consolidate_params.json``."""
    params = read_json(model_dir / layout.META_PARAMS)
    extra = model_dir / "consolidate_params.json"
    return {**params, **params.get("model", {}), **(read_json(extra) if extra.is_file() else {})}


def ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's SwiGLU width: 2/3 of 4 * dim, scaled, rounded up to a multiple of ``multiple_of`` (11008 for 7B)."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


def model_config_from_params(params: dict, vocab: Vocab) -> ModelConfig:
    """Meta's ``ModelArgs`` fields -> ``ModelConfig``; a release without QK-norm is refused (Chameleon has it)."""
    if not params.get("qk_normalization", True):
        raise ValueError("params.json sets qk_normalization=false; fusion's Chameleon decoder always has QK-norm")
    if int(params.get("vocab_size", vocab.size)) != vocab.size:
        raise ValueError(f"params.json vocab_size={params['vocab_size']} but text_tokenizer.json has {vocab.size} ids")
    dim, theta = int(params["dim"]), float(params.get("rope_theta", 10000.0))
    return ModelConfig(
        vocab=vocab, dim=dim, n_layers=int(params["n_layers"]), n_heads=int(params["n_heads"]),
        n_kv_heads=int(params.get("n_kv_heads") or params["n_heads"]),
        ffn_dim=ffn_dim(dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")),
        max_seq_len=int(params.get("max_seq_len") or (LONG_CONTEXT if theta > 10000.0 else CONTEXT)),
        rope_theta=theta, norm_eps=float(params.get("norm_eps", 1e-5)), qk_norm=True,
        swin_norm=bool(params.get("swin_norm", False)), tie_embeddings=False, dropout=0.0)


def vocab_from_text_tokenizer(path: Path) -> Vocab:
    """The Chameleon layout read from ``text_tokenizer.json``'s vocabulary (what HF keeps as ``vocabulary_map``)."""
    tok = read_json(path)
    vmap = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok.get("added_tokens", [])}}
    return vocab_from_hf_config({"vocabulary_map": vmap, "vocab_size": max(vmap.values()) + 1})


# ------------------------------------------------------------------ weights


def shard_paths(model_dir: Path) -> list[Path]:
    """``consolidated.pth``, or ``consolidated.00.pth`` ... in rank order."""
    shards = sorted(model_dir.glob(layout.META_WEIGHTS_GLOB))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no {layout.META_WEIGHTS_GLOB} weights")
    return shards


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from RoPE pairs (2i, 2i+1) to halves (i, i + D/2); works on [H*D, ...] and [D]."""
    rest = w.shape[1:]
    return w.reshape(n_heads, -1, 2, *rest).transpose(1, 2).reshape(w.shape)


def _joined(shards: list[dict], key: str, dim: int) -> torch.Tensor:
    return torch.cat([s[key] for s in shards], dim=dim)


def _replicated(shards: list[dict], key: str) -> torch.Tensor:
    """A norm every rank holds: the one copy when they agree, their mean otherwise (as HF's converter)."""
    copies = [s[key] for s in shards]
    if all(torch.equal(copies[0], c) for c in copies[1:]):
        return copies[0]
    return torch.stack([c.float() for c in copies]).mean(0).to(copies[0].dtype)


def _qkv(shard: dict, p: str, cfg: ModelConfig, ranks: int) -> tuple[torch.Tensor, ...]:
    """One rank's wq, wk, wv (a fused ``wqkv`` is split into its local heads)."""
    if p + "attention.wqkv.weight" not in shard:
        return tuple(shard[p + f"attention.{n}.weight"] for n in ("wq", "wk", "wv"))
    hd = cfg.head_dim
    sizes = [cfg.n_heads // ranks * hd, cfg.n_kv_heads // ranks * hd, cfg.n_kv_heads // ranks * hd]
    return shard[p + "attention.wqkv.weight"].split(sizes)


def _head_norm(shards: list[dict], key: str, heads: int) -> torch.Tensor:
    """Each rank's [D] norm vector, permuted to halves and repeated for that rank's ``heads`` -> [H, D]."""
    per_rank = [interleaved_to_half(s[key], 1) for s in shards]
    return torch.stack(per_rank).repeat_interleave(heads // len(shards), dim=0)


def _layer(shards: list[dict], i: int, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    p, ranks = f"layers.{i}.", len(shards)
    for s in shards:  # Meta's loader fuses w1 / w3 as w13; unfuse so both spellings read alike
        if p + "feed_forward.w13.weight" in s:
            s[p + "feed_forward.w1.weight"], s[p + "feed_forward.w3.weight"] = s.pop(
                p + "feed_forward.w13.weight").chunk(2)
    q, k, v = (torch.cat(parts) for parts in zip(*(_qkv(s, p, cfg, ranks) for s in shards), strict=True))
    out = {"attn.q_proj.weight": interleaved_to_half(q, cfg.n_heads),
           "attn.k_proj.weight": interleaved_to_half(k, cfg.n_kv_heads), "attn.v_proj.weight": v}
    out.update({ours: _joined(shards, p + meta, 0) for meta, ours in COLUMN_PARALLEL.items()})
    out.update({ours: _joined(shards, p + meta, 1) for meta, ours in ROW_PARALLEL.items()})
    out.update({ours: _replicated(shards, p + meta) for meta, ours in REPLICATED.items()})
    for name, heads in (("q", cfg.n_heads), ("k", cfg.n_kv_heads)):
        for part in ("weight", "bias"):
            out[f"attn.{name}_norm.{part}"] = _head_norm(shards, p + f"attention.{name}_normalization.{part}", heads)
    return {f"layers.{i}.{k}": t for k, t in out.items()}


def meta_to_fusion_state(shards: list[dict[str, torch.Tensor]], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The rank shards of a release -> one state dict under fusion's names (shapes checked by the model's loader)."""
    ranks = len(shards)
    if cfg.n_heads % ranks or cfg.n_kv_heads % ranks:
        raise ValueError(f"{ranks} shards do not split {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads evenly")
    unknown = sorted(k for s in shards for k in s if k not in GLOBAL_KEYS and not (
        (m := LAYER_KEY.fullmatch(k)) and int(m.group(1)) < cfg.n_layers))
    if unknown:
        raise ValueError(f"unexpected tensors for a {cfg.n_layers}-layer Chameleon: {unknown[:8]}")
    shards = [{k: v for k, v in s.items() if k not in IGNORED} for s in shards]
    state = {"embed.weight": _joined(shards, "tok_embeddings.weight", 1),
             "norm.weight": _replicated(shards, "norm.weight"), "lm_head.weight": _joined(shards, "output.weight", 0)}
    for i in range(cfg.n_layers):
        state.update(_layer(shards, i, cfg))
    return state


# ------------------------------------------------------------------ folder


def load_shards(model_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Every rank's tensors, read without unpickling code (a file holding anything else is refused by torch)."""
    return [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in shard_paths(model_dir)]


def convert_meta_chameleon(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Meta's release (its root or one ``models/<size>`` folder) -> fusion folder: the decoder, ``tokenizer.json``
    and the VQGAN with its decoder (``vq.json`` + ``vq.safetensors``)."""
    src, dst = Path(src_dir), Path(dst_dir)
    model_dir = find_model_dir(src)
    if model_dir is None:
        raise FileNotFoundError(f"{src}: no {layout.META_PARAMS} here nor in models/<size>/")
    tok_dir = find_tokenizer_dir(model_dir)
    vocab = vocab_from_text_tokenizer(tok_dir / layout.META_TEXT_TOKENIZER)
    cfg = model_config_from_params(read_params(model_dir), vocab)
    try:
        state = meta_to_fusion_state(load_shards(model_dir), cfg)
    except KeyError as e:
        raise ValueError(f"{model_dir}: the weights lack {e} (params.json says {cfg.n_layers} layers)") from None
    vq = image_tokenizer_from_taming(tok_dir / layout.META_VQGAN, tok_dir / layout.META_VQGAN_CONFIG)
    dst.mkdir(parents=True, exist_ok=True)
    save_tensors(dst / layout.MODEL_WEIGHTS, state)
    vq.save_pretrained(dst)
    with atomic_path(dst / layout.HF_TEXT_TOKENIZER) as tmp:
        shutil.copyfile(tok_dir / layout.META_TEXT_TOKENIZER, tmp)
    write_json(dst / layout.MODEL_CONFIG, cfg.to_dict())  # last: a folder with config.json is complete
    return dst
