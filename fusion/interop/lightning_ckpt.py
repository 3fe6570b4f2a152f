"""A PyTorch Lightning ``.ckpt`` (Meta's / taming's ``vqgan.ckpt``) read without running any code from it.

``torch.load(weights_only=True)`` unpickles tensors and plain containers only. A Lightning checkpoint also pickles
bookkeeping: callback states keyed by the callback's class, numpy scalars, hyper-parameter namespaces. The globals
those name are on an allow-list and load as inert stand-ins (never the real classes, which need not be installed);
any other global is refused by name, before anything is unpickled when the file is in torch's zip format.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

# Bookkeeping globals of Lightning checkpoints. Each loads as ``_Inert``: only the ``state_dict`` is ever read.
LIGHTNING_GLOBALS = frozenset({
    *(f"{pkg}.callbacks.{mod}" for pkg in ("pytorch_lightning", "lightning.pytorch")
      for mod in ("model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping",
                  "lr_monitor.LearningRateMonitor", "progress.tqdm_progress.TQDMProgressBar")),
    "pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    *(f"numpy.dtypes.{t}DType" for t in ("Float64", "Float32", "Int64", "Int32", "Bool")),
    "argparse.Namespace", "pathlib.PosixPath", "pathlib.WindowsPath", "collections.defaultdict", "typing.Any",
    *(f"omegaconf.{name}" for name in ("dictconfig.DictConfig", "listconfig.ListConfig", "base.ContainerMetadata",
                                       "base.Metadata", "nodes.AnyNode", "nodes.StringNode", "nodes.IntegerNode",
                                       "nodes.FloatNode", "nodes.BooleanNode")),
})


class _Inert:
    """Stands in for an allow-listed bookkeeping object: takes any arguments and state, and does nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _refuse(path: Path, names: list[str]) -> ValueError:
    return ValueError(f"{path}: refusing to unpickle {names}: besides tensors only Lightning's bookkeeping objects "
                      "are read from a .ckpt (fusion.interop.lightning_ckpt.LIGHTNING_GLOBALS), and those as inert "
                      "stand-ins; re-save the state dict alone with torch.save(ckpt['state_dict'], ...) if you "
                      "trust the file")


def load_lightning_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a plain pickled state dict), loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # torch's legacy (pre-zip) format: the unpickler itself names what it refuses below
        found = []
    refused = sorted(set(found) - LIGHTNING_GLOBALS)
    if refused:
        raise _refuse(path, refused)
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in sorted(LIGHTNING_GLOBALS)]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refuse(path, re.findall(r"GLOBAL ([\w.]+)", str(e)) or [str(e)]) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    return dict(state)
