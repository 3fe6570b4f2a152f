"""A training checkpoint for inference: HF-layout sharded safetensors written shard by shard, straight from DCP.

``export_weights`` reads the model's tensors out of a step folder's ``dcp/`` one output file at a time (DCP
assembles each tensor from the pieces the ranks wrote) and writes ``model-0000i-of-0000N.safetensors`` plus
``model.safetensors.index.json``; under torchrun the output files are dealt out over the ranks. No process ever
holds more than one output file, so the model need not fit in one host's memory. ``export`` is what
``fusion export RUN_DIR OUT_DIR`` runs; the run's final save exports into its last step folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from fusion.checkpoint import (
    MODEL_CONFIG,
    MODEL_INDEX,
    MODEL_WEIGHTS,
    TRAINING_STATE,
    model_shard_name,
    resolve_checkpoint,
)
from fusion.files import read_json, save_tensors, write_json
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.numerics import refuse_nonfinite
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.train.checkpointing import read_state
from fusion.train.distributed import DistInfo, current_dist, together

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 5 * 2**30  # HF's customary shard size
PREFIX = "model."  # the model's tensors inside a training checkpoint (beside "optim.")


def model_tensors(state_dir: Path) -> dict[str, TensorStorageMetadata]:
    """Name -> shape / dtype of every model tensor in a DCP folder, in saved order."""
    meta = FileSystemReader(state_dir).read_metadata().state_dict_metadata
    return {k.removeprefix(PREFIX): v for k, v in meta.items()
            if k.startswith(PREFIX) and isinstance(v, TensorStorageMetadata)}


def shard_plan(tensors: dict[str, TensorStorageMetadata], max_bytes: int) -> list[list[str]]:
    """Names grouped into output files of at most ``max_bytes`` each (a larger tensor gets a file of its own)."""
    files, size = [[]], 0
    for name, meta in tensors.items():
        nbytes = meta.size.numel() * meta.properties.dtype.itemsize
        if files[-1] and size + nbytes > max_bytes:
            files.append([])
            size = 0
        files[-1].append(name)
        size += nbytes
    return files


def read_model_tensors(state_dir: Path, names: list[str], tensors: dict[str, TensorStorageMetadata],
                       device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The full values of ``names``, read from a DCP folder by this process alone."""
    out = {PREFIX + n: torch.empty(tensors[n].size, dtype=tensors[n].properties.dtype, device=device) for n in names}
    read_state(out, state_dir, local=True)
    return {k.removeprefix(PREFIX): v for k, v in out.items()}


def export_weights(state_dir: Path, out_dir: Path, *, info: DistInfo | None = None,
                   max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write the HF sharded layout of the model in ``state_dir`` into ``out_dir`` (a collective under torchrun)."""
    info = info or current_dist()
    tensors = model_tensors(state_dir)
    plan = shard_plan(tensors, max_shard_bytes)

    def write_mine() -> None:
        for i, names in enumerate(plan):
            if i % info.world_size == info.rank:
                save_tensors(out_dir / model_shard_name(i + 1, len(plan)), read_model_tensors(state_dir, names,
                                                                                              tensors))

    together(write_mine)
    weight_map = {n: model_shard_name(i + 1, len(plan)) for i, names in enumerate(plan) for n in names}
    total = sum(m.size.numel() * m.properties.dtype.itemsize for m in tensors.values())
    together(lambda: write_json(out_dir / MODEL_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}),
             main_only=True)


def export(path: str | os.PathLike, out_dir: str | os.PathLike, *,
           max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """A complete inference folder (config, sharded weights, tokenizers) from a run's newest complete checkpoint."""
    folder, out_dir = resolve_checkpoint(path), Path(out_dir)
    if not (folder / TRAINING_STATE).is_dir():
        raise FileNotFoundError(f"{folder} holds no training checkpoint ({TRAINING_STATE}/); give a training run "
                                f"folder or one of its step folders")
    if out_dir.resolve() == folder.resolve():
        raise ValueError(f"export into a folder other than the checkpoint itself ({folder})")
    out_dir.mkdir(parents=True, exist_ok=True)
    export_weights(folder / TRAINING_STATE, out_dir, max_shard_bytes=max_shard_bytes)
    write_json(out_dir / MODEL_CONFIG, read_json(folder / MODEL_CONFIG))
    MixedTokenizer.from_pretrained(folder).save_pretrained(out_dir)
    log.info("exported %s to %s", folder, out_dir)
    return out_dir


def load_decoder(folder: str | os.PathLike, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, check_finite: bool = True) -> Transformer:
    """The decoder of a checkpoint folder, or of a step folder that holds only the training checkpoint."""
    folder = Path(folder)
    state_dir = folder / TRAINING_STATE
    if (folder / MODEL_WEIGHTS).is_file() or (folder / MODEL_INDEX).is_file() or not state_dir.is_dir():
        return Transformer.from_pretrained(folder, device=device, dtype=dtype, check_finite=check_finite)
    cfg = ModelConfig.from_dict(read_json(folder / MODEL_CONFIG))
    tensors = model_tensors(state_dir)
    state = read_model_tensors(state_dir, list(tensors), tensors, device=device or "cpu")
    if check_finite:
        refuse_nonfinite(state, str(state_dir))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_weights(state, dtype=dtype)
    return model.eval()
