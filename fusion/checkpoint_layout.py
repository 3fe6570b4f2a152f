"""The file names of fusion's folders, in one place (names only; nothing here reads a disk).

A checkpoint folder (``Fusion.save_pretrained``; also what ``fusion convert`` and ``fusion export`` write) holds
the decoder (``config.json`` with ``model.safetensors``, or HF's sharded ``model-0000i-of-0000N.safetensors`` +
``model.safetensors.index.json``), the text tokenizer (``text.model``, or HF's ``tokenizer.json`` in a converted
folder), the image tokenizer (``vq.json`` + ``vq.safetensors``, or HF Chameleon's encoder-only VQ as
``hf_vq_config.json`` + ``hf_vqmodel.safetensors``) and the sampling defaults (``generation_config.json``).

A training run folder holds ``metrics.jsonl``, ``loss.png`` and ``step_NNNNNNN/`` checkpoints. Each step folder
holds ``config.json``, the tokenizers, ``trainer_state.json``, the model and optimizer state as a
``torch.distributed.checkpoint`` folder ``dcp/`` (one file per rank), the export for inference after the run's
last step, and ``manifest.json`` (size and sha256 of every other file). A step folder is built as
``.step_NNNNNNN.tmp`` and appears by one rename. The names of the released folders ``fusion convert`` reads are
here too.
"""

from __future__ import annotations

# checkpoint folder
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"  # sharded weights, HF's layout
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
TOKENS = "tokens"  # the corpus tokenized into shards, when training from document files
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "dcp"
MANIFEST = "manifest.json"
STEP_GLOB = "step_[0-9]*"
TMP_STEP_GLOB = ".step_[0-9]*.tmp"


def step_name(step: int) -> str:
    """The run folder's name for the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def tmp_step_name(step: int) -> str:
    """The name a step folder is built under before its rename."""
    return f".{step_name(step)}.tmp"


def model_shard_name(index: int, count: int) -> str:
    """HF's name for weight file ``index`` (1-based) of ``count``."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"
