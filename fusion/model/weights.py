"""A decoder's weights from any folder fusion writes: ``model.safetensors``, HF's sharded layout
(``model.safetensors.index.json``), or a training step folder's ``torch.distributed.checkpoint`` folder ``dcp/``
(read whole, by this process alone: DCP assembles each tensor from the pieces the ranks wrote)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from fusion import checkpoint_layout as layout
from fusion.files import first_present, load_tensors, read_json

PREFIX = "model."  # the model's tensors inside a training checkpoint (beside "optim.")


def weights_source(directory: Path) -> Path:
    """The file or folder ``load_weights`` reads in ``directory``: safetensors first, then a training state."""
    for name in (layout.MODEL_INDEX, layout.MODEL_WEIGHTS):
        if (directory / name).is_file():
            return directory / name
    if (directory / layout.TRAINING_STATE).is_dir():
        return directory / layout.TRAINING_STATE
    return first_present(directory, layout.MODEL_WEIGHTS, layout.MODEL_INDEX, what="decoder weights")


def load_weights(directory: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The decoder's tensors under fusion's names, from whichever layout ``directory`` holds."""
    source = weights_source(directory)
    if source.name == layout.TRAINING_STATE:
        tensors = model_tensors(source)
        return read_model_tensors(source, list(tensors), tensors, device=device)
    if source.name == layout.MODEL_WEIGHTS:
        return load_tensors(source, device=device)
    weight_map = read_json(source)["weight_map"]
    state = {}
    for file in sorted(set(weight_map.values())):
        part = load_tensors(directory / file, device=device)
        stray = sorted(k for k in part if weight_map.get(k) != file)
        if stray:
            raise ValueError(f"{directory / file} holds tensors its index {source} does not place there: {stray[:3]}")
        state.update(part)
    return state


@contextlib.contextmanager
def quiet_when_local(local: bool) -> Iterator[None]:
    """DCP warns on every single-process call that it assumes a single process: that is the intent here."""
    with warnings.catch_warnings():
        if local:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def read_local(state: dict, folder: Path) -> None:
    """Fill ``state``'s tensors from a DCP folder, by this process alone."""
    with quiet_when_local(True):
        dcp.load(state, checkpoint_id=folder, no_dist=True)


def model_tensors(state_dir: Path) -> dict[str, TensorStorageMetadata]:
    """Name -> shape / dtype of every model tensor in a DCP folder, in saved order."""
    meta = FileSystemReader(state_dir).read_metadata().state_dict_metadata
    return {k.removeprefix(PREFIX): v for k, v in meta.items()
            if k.startswith(PREFIX) and isinstance(v, TensorStorageMetadata)}


def read_model_tensors(state_dir: Path, names: list[str], tensors: dict[str, TensorStorageMetadata],
                       device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The full values of ``names``, read from a DCP folder by this process alone."""
    out = {PREFIX + n: torch.empty(tensors[n].size, dtype=tensors[n].properties.dtype, device=device) for n in names}
    read_local(out, state_dir)
    return {k.removeprefix(PREFIX): v for k, v in out.items()}
