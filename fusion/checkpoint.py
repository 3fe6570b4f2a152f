"""The files fusion reads and writes, named in one place: a checkpoint folder, a training run folder, and the
released folders ``fusion convert`` reads.

A checkpoint folder (``Fusion.save_pretrained``; also what ``fusion convert`` writes) holds the decoder
(``config.json``, ``model.safetensors``), the text tokenizer (``text.model``, or HF's ``tokenizer.json`` in a
converted folder), the image tokenizer (``vq.json`` + ``vq.safetensors``, or HF Chameleon's encoder-only VQ as
``hf_vq_config.json`` + ``hf_vqmodel.safetensors``) and the sampling defaults (``generation_config.json``). A
training run folder holds ``metrics.jsonl``, ``loss.png``, the ``latest`` pointer and ``step_NNNNNNN/``
checkpoint folders that add ``optimizer.pt`` and ``trainer_state.json``. Every file is written atomically
(``fusion.files``).
"""

from __future__ import annotations

import os
from pathlib import Path

# checkpoint folder
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
TEXT_MODEL = "text.model"
HF_TEXT_TOKENIZER = "tokenizer.json"
VQ_CONFIG = "vq.json"
VQ_WEIGHTS = "vq.safetensors"
HF_VQ_CONFIG = "hf_vq_config.json"
HF_VQ_WEIGHTS = "hf_vqmodel.safetensors"
GENERATION_CONFIG = "generation_config.json"

# source folders fusion convert reads: HF transformers' layout, Meta's original release
HF_MODEL_CONFIG = "config.json"
META_PARAMS = "params.json"
META_WEIGHTS_GLOB = "consolidated*.pth"
META_TOKENIZER_DIR = "tokenizer"
META_TEXT_TOKENIZER = "text_tokenizer.json"
META_VQGAN = "vqgan.ckpt"
META_VQGAN_CONFIG = "vqgan.yaml"

# training run folder
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
LATEST = "latest"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
STEP_GLOB = "step_[0-9]*"


def step_name(step: int) -> str:
    """The run folder's name for the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def first_present(directory: str | os.PathLike, *names: str, what: str) -> Path:
    """The first of ``names`` that exists in ``directory``; a FileNotFoundError naming all of them otherwise."""
    directory = Path(directory)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {what}: expected {' or '.join(names)}")
