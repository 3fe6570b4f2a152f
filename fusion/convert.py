"""Import a released Chameleon / Anole checkpoint folder, whatever its layout, as a fusion checkpoint folder.

- HF transformers' layout (``config.json`` + safetensors, ``interop/hf_chameleon.py``): Chameleon's VQ is an encoder
  only, Anole's adds the decoder;
- Meta's original release (``models/<size>/params.json`` + ``consolidated*.pth``, ``tokenizer/``;
  ``interop/meta_chameleon.py``), VQGAN decoder included;
- ``attach_vqgan``: a taming ``vqgan.ckpt`` + ``vqgan.yaml`` gives any converted folder a decoder, if its codebook
  is the one the folder's encoder uses.

HF's ``generation_config.json`` is translated into fusion's (``GenerationConfig.from_hf``), never copied.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from fusion import checkpoint_layout as layout
from fusion.files import read_json
from fusion.inference.config import GenerationConfig
from fusion.interop.hf_chameleon import convert_hf_chameleon
from fusion.interop.meta_chameleon import convert_meta_chameleon, find_model_dir
from fusion.interop.taming import image_tokenizer_from_taming
from fusion.tokenizers.image import ImageTokenizer

log = logging.getLogger(__name__)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# HF releases store the VQ in bf16, Meta's vqgan.ckpt in fp32: the same codebook agrees to bf16 rounding.
CODEBOOK_RTOL, CODEBOOK_ATOL = 2.0**-8, 1e-6


def local_folder(src: str | os.PathLike) -> Path:
    """``src`` as an existing folder; a Hub id gets the command that downloads it."""
    path = Path(src)
    if path.is_dir():
        return path
    if not path.exists() and HUB_ID.fullmatch(str(src)):
        raise FileNotFoundError(f"{src!r} is not a local folder. fusion convert reads local files only: download "
                                f"it first with `huggingface-cli download {src} --local-dir {path.name}`, then pass "
                                "the folder")
    raise FileNotFoundError(f"{src}: no such folder")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, vqgan: str | os.PathLike | None = None,
            vqgan_config: str | os.PathLike | None = None) -> Path:
    """``src`` (HF or Meta layout) -> fusion folder ``dst``; with ``vqgan`` + ``vqgan_config`` a decoder is attached."""
    if (vqgan is None) != (vqgan_config is None):
        raise ValueError("--vqgan and --vqgan-config go together (the checkpoint and its yaml)")
    src = local_folder(src)
    if (src / layout.HF_MODEL_CONFIG).is_file():
        dst = convert_hf_chameleon(src, dst)
        translate_generation_config(src / layout.GENERATION_CONFIG, dst)
    elif find_model_dir(src) is not None:
        dst = convert_meta_chameleon(src, dst)
    else:
        raise FileNotFoundError(f"{src}: neither an HF Chameleon / Anole folder ({layout.HF_MODEL_CONFIG}) nor Meta's "
                                f"release ({layout.META_PARAMS} here or in models/<size>/)")
    if vqgan is not None:
        attach_vqgan(dst, vqgan, vqgan_config)
    return Path(dst)


def translate_generation_config(path: Path, dst: Path) -> None:
    """HF's ``generation_config.json`` (when ``path`` exists) -> fusion's, in ``dst``; dropped keys are logged."""
    if not path.is_file():
        return
    hf = read_json(path)
    try:
        config, dropped = GenerationConfig.from_hf(hf)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e
    if dropped:
        log.info("convert: %s: translated %s; dropped %s (token ids live in the vocabulary, the rest has no "
                 "fusion knob)", path.name, sorted(set(hf) - set(dropped)), dropped)
    config.save_pretrained(dst)


def _check_codebook(old: ImageTokenizer, new: ImageTokenizer, ckpt: str | os.PathLike) -> None:
    """The decoder must read the codes the folder's encoder (and so its LM) writes: same grid, same codebook."""
    if new.tokens_per_image != old.tokens_per_image:
        raise ValueError(f"{ckpt}: {new.tokens_per_image} codes per image, the folder's encoder makes "
                         f"{old.tokens_per_image}")
    a, b = old.quantize.codebook.detach().float().cpu(), new.quantize.codebook.detach().float().cpu()
    if a.shape != b.shape:
        raise ValueError(f"{ckpt}: codebook of {b.shape[0]} x {b.shape[1]}, the folder's encoder has "
                         f"{a.shape[0]} x {a.shape[1]}")
    if not torch.allclose(a, b, rtol=CODEBOOK_RTOL, atol=CODEBOOK_ATOL):
        worst = int((a - b).abs().amax(-1).argmax())
        raise ValueError(f"{ckpt}: its codebook differs from the folder's encoder's (code {worst} first of all): "
                         "this VQGAN is not the one the model was trained with")


def attach_vqgan(folder: str | os.PathLike, ckpt: str | os.PathLike, yaml_config: str | os.PathLike) -> Path:
    """Replace ``folder``'s image tokenizer by the VQGAN of ``ckpt`` + ``yaml_config`` (decoder included)."""
    folder = local_folder(folder)
    old = ImageTokenizer.from_pretrained(folder)
    new = image_tokenizer_from_taming(ckpt, yaml_config)
    _check_codebook(old, new, ckpt)
    new.save_pretrained(folder)
    for stale in (layout.HF_VQ_WEIGHTS, layout.HF_VQ_CONFIG):  # an older convert's copy of HF's VQ: keep one
        (folder / stale).unlink(missing_ok=True)
    return folder
