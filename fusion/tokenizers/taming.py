"""taming-transformers / Meta VQGAN / HF ``ChameleonVQVAE`` weight names <-> ours.

Only the codebook differs: taming's ``quantize.embedding.weight`` [K, D] is vector-quantize-pytorch's
``quantize._codebook.embed`` [1, K, D], whose EMA statistics taming does not have.
"""

from __future__ import annotations

import torch

TAMING_CODEBOOK, OUR_CODEBOOK = "quantize.embedding.weight", "quantize._codebook.embed"
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
    embed = state[TAMING_CODEBOOK].float()[None]
    out[OUR_CODEBOOK] = embed
    out["quantize._codebook.embed_avg"] = embed.clone()
    out["quantize._codebook.cluster_size"] = torch.ones(embed.shape[:2])
    out["quantize._codebook.initted"] = torch.tensor(True)
    return out

