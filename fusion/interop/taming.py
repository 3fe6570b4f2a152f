"""taming-transformers / Meta VQGAN / HF ``ChameleonVQVAE`` weights <-> fusion's ``ImageTokenizer``.

Only the codebook's name differs: taming's ``quantize.embedding.weight`` [K, D] is vector-quantize-pytorch's
``quantize._codebook.embed`` [1, K, D], whose EMA statistics taming does not have. The conv nets keep taming's
names (``tokenizers/vqgan.py``), so the rest of a state dict loads as it is.
"""

from __future__ import annotations

import os

import torch

from fusion.interop.lightning_ckpt import load_lightning_state
from fusion.tokenizers.image import CODEBOOK as OUR_CODEBOOK
from fusion.tokenizers.image import ImageTokenizer, codebook_state
from fusion.tokenizers.vq_config import VQConfig, check_plain_codebook

TAMING_CODEBOOK = "quantize.embedding.weight"
HF_PREFIX = "model.vqmodel."  # HF Chameleon keeps the VQ inside the LM's state dict under this prefix


def to_taming_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> taming names: the codebook becomes ``quantize.embedding.weight`` [K, D]; EMA stats go."""
    out = {k: v for k, v in state.items() if not k.startswith("quantize.")}
    out[TAMING_CODEBOOK] = state[OUR_CODEBOOK][0]
    return out


def from_taming_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Taming / HF names -> ours: the codebook gets a head axis, and EMA stats start from it."""
    if TAMING_CODEBOOK not in state:
        raise ValueError(f"checkpoint has no {TAMING_CODEBOOK}")
    out = {k: v for k, v in state.items() if k != TAMING_CODEBOOK}
    return {**out, **codebook_state(state[TAMING_CODEBOOK])}


def taming_state_dict(tokenizer: ImageTokenizer) -> dict[str, torch.Tensor]:
    """A tokenizer's weights under taming / Meta ``vqgan.ckpt`` names."""
    check_plain_codebook(tokenizer.cfg)
    return to_taming_state(tokenizer.state_dict())


def image_tokenizer_from_taming_state(cfg: VQConfig, state: dict[str, torch.Tensor]) -> ImageTokenizer:
    """A tokenizer of ``cfg`` holding taming-named ``state``; tensors the config does not expect are named."""
    model = ImageTokenizer(cfg)
    try:
        missing, unexpected = model.load_state_dict(from_taming_state(state), strict=False)
    except RuntimeError as e:  # shapes that disagree with the config
        raise ValueError(f"checkpoint does not match its config: {e}") from None
    missing = [k for k in missing if not k.startswith("quantize._codebook.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
    return model.eval()


def image_tokenizer_from_taming(ckpt: dict | str | os.PathLike,
                                yaml_config: dict | str | os.PathLike) -> ImageTokenizer:
    """Meta's / taming's ``vqgan.ckpt`` (a path, read safely by ``lightning_ckpt``; or its state dict, or the
    ckpt dict holding it) and ``vqgan.yaml`` (a path or its parsed dict) -> a tokenizer, decoder included."""
    if not isinstance(ckpt, dict):
        ckpt = load_lightning_state(ckpt)
    state = ckpt.get("state_dict", ckpt)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # the GAN/LPIPS training losses
    return image_tokenizer_from_taming_state(VQConfig.from_taming(yaml_config), state)


def image_tokenizer_from_hf(state_dict: dict[str, torch.Tensor], hf_vq_config: dict) -> ImageTokenizer:
    """HF ``ChameleonVQVAE`` weights (its own state dict or ``model.vqmodel.*``) + its config -> a tokenizer.

    HF Chameleon ships the encoder only; HF-format Anole checkpoints add taming's ``decoder.*`` beside it, and
    then the tokenizer decodes too.
    """
    state = {k.removeprefix(HF_PREFIX): v for k, v in state_dict.items()}
    if any(k.startswith("model.") for k in state_dict) and not any(k.startswith(HF_PREFIX) for k in state_dict):
        raise ValueError(f"state dict has no {HF_PREFIX}* tensors")
    state = {k: v for k, v in state.items() if not k.startswith(("model.", "lm_head."))}
    cfg = VQConfig.from_hf(hf_vq_config, decoder=any(k.startswith("decoder.") for k in state))
    return image_tokenizer_from_taming_state(cfg, state)
