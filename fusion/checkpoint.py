"""The files fusion reads and writes, named in one place, and how a training run folder resolves to a checkpoint.

A checkpoint folder (``Fusion.save_pretrained``; also what ``fusion convert`` and ``fusion export`` write) holds
the decoder (``config.json`` with ``model.safetensors``, or HF's sharded ``model-0000i-of-0000N.safetensors`` +
``model.safetensors.index.json``), the text tokenizer (``text.model``, or HF's ``tokenizer.json`` in a converted
folder), the image tokenizer (``vq.json`` + ``vq.safetensors``, or HF Chameleon's encoder-only VQ as
``hf_vq_config.json`` + ``hf_vqmodel.safetensors``) and the sampling defaults (``generation_config.json``).

A training run folder holds ``metrics.jsonl``, ``loss.png`` and ``step_NNNNNNN/`` checkpoints. Each step folder
holds ``config.json``, the tokenizers, ``trainer_state.json``, the model and optimizer state as a
``torch.distributed.checkpoint`` folder ``dcp/`` (one file per rank), the export for inference after the run's
last step, and ``manifest.json`` (size and sha256 of every other file). A step folder is built as
``.step_NNNNNNN.tmp`` and appears by one rename; the newest step folder whose manifest checks out is the run's
checkpoint. The names of the released folders ``fusion convert`` reads are here too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fusion.files import file_record, read_json

log = logging.getLogger(__name__)

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


def first_present(directory: str | os.PathLike, *names: str, what: str) -> Path:
    """The first of ``names`` that exists in ``directory``; a FileNotFoundError naming all of them otherwise."""
    directory = Path(directory)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {what}: expected {' or '.join(names)}")


def step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """A run folder's step folders, newest first."""
    return sorted((p for p in Path(run_dir).glob(STEP_GLOB) if p.is_dir()), reverse=True)


def manifest_problems(folder: str | os.PathLike, *, hashes: bool = True, part: tuple[int, int] = (0, 1)) -> list[str]:
    """What is wrong with a step folder's files against its manifest ([] when complete).

    ``part=(i, n)`` checks every n-th file from the i-th, so n ranks can share the hashing of a large checkpoint.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return [f"{folder / MANIFEST} is missing (an unfinished or foreign folder)"]
    try:
        files = read_json(folder / MANIFEST)["files"]
    except (ValueError, KeyError) as e:
        return [f"{folder / MANIFEST} is unreadable: {e}"]
    problems = []
    for name in sorted(files)[part[0]::part[1]]:
        path, want = folder / name, files[name]
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {want['bytes']}")
        elif hashes and file_record(path)["sha256"] != want["sha256"]:
            problems.append(f"{path} does not match its sha256 in the manifest (corrupt)")
    return problems


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder as it is; a training run folder -> its newest complete step folder.

    Step folders are checked against their manifests by file size (hashes are checked when training resumes);
    an incomplete one is skipped with a warning naming the bad file.
    """
    path = Path(path)
    if (path / MODEL_CONFIG).is_file() or not path.is_dir():
        return path
    for folder in step_folders(path):
        problems = manifest_problems(folder, hashes=False)
        if not problems:
            return folder
        log.warning("skipping checkpoint %s: %s", folder, "; ".join(problems))
    raise FileNotFoundError(f"{path} is neither a checkpoint folder ({MODEL_CONFIG} is missing) nor a training run "
                            f"folder with a complete {STEP_GLOB} checkpoint")
