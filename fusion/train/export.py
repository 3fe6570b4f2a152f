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
import warnings
from pathlib import Path

from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from fusion.checkpoint_layout import MODEL_CONFIG, MODEL_INDEX, TRAINING_STATE, model_shard_name
from fusion.files import read_json, save_tensors, write_json
from fusion.model.transformer import Transformer
from fusion.model.weights import model_tensors, read_model_tensors
from fusion.run_checkpoints import resolve_checkpoint
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.train.distributed import DistInfo, current_dist, together

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 5 * 2**30  # HF's customary shard size


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


def load_decoder(folder: str | os.PathLike, **kwargs) -> Transformer:
    """Deprecated alias of ``Transformer.from_pretrained``, which now reads a step folder's training state too."""
    warnings.warn("fusion.train.export.load_decoder is deprecated: use Transformer.from_pretrained",
                  DeprecationWarning, stacklevel=2)
    return Transformer.from_pretrained(folder, **kwargs)
