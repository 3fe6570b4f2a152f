"""Training checkpoints: ``out_dir/step_NNNNNNN/`` = model + tokenizers + ``optimizer.pt`` + ``trainer_state.json``.

A step folder is built under a temp name and appears by one rename; the ``latest`` pointer file is then
replaced atomically and old folders are pruned. A crash (or a full disk) at any point leaves the previous
checkpoint complete and ``latest`` pointing at it.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fusion.checkpoint import LATEST, OPTIMIZER, STEP_GLOB, TRAINER_STATE, step_name
from fusion.files import atomic_path, read_json, write_json


def save_training_checkpoint(out_dir: str | os.PathLike, step: int, *, write_model: Callable[[Path], None],
                             optimizer_state: dict, trainer_state: dict, keep_last: int) -> Path:
    """Write a complete step folder, point ``latest`` at it, keep the newest ``keep_last``; returns the folder."""
    out_dir = Path(out_dir)
    final = out_dir / step_name(step)
    tmp = out_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_model(tmp)
        with atomic_path(tmp / OPTIMIZER) as t:
            torch.save(optimizer_state, t)
        write_json(tmp / TRAINER_STATE, trainer_state)
        if final.exists():  # a re-save of the same step: a directory cannot be renamed over a non-empty one
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with atomic_path(out_dir / LATEST) as t:
        t.write_text(final.name + "\n")
    prune(out_dir, keep_last)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` points at, or None when there is no checkpoint yet."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(out_dir) / pointer.read_text().strip()
    if not (folder / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{pointer} points at {folder}, which is not a complete checkpoint")
    return folder


def prune(out_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step folders (never the one ``latest`` names)."""
    out_dir = Path(out_dir)
    keep = {p.name for p in sorted(out_dir.glob(STEP_GLOB))[-max(keep_last, 1):]}
    pointer = out_dir / LATEST
    if pointer.is_file():
        keep.add(pointer.read_text().strip())
    for p in out_dir.glob(STEP_GLOB):
        if p.name not in keep:
            shutil.rmtree(p)


def load_trainer_state(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder) / TRAINER_STATE)


def load_optimizer_state(folder: str | os.PathLike) -> dict:
    return torch.load(Path(folder) / OPTIMIZER, map_location="cpu", weights_only=True)


def config_diff(saved: dict, current: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``field: saved -> now`` for every field that differs (keys in ``ignore`` excepted)."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


# -------------------------------------------------------------------- RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict:
    """Every RNG the training step may touch (python, numpy, torch CPU and CUDA), as JSON-able values."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss],
            "numpy": [np_state[0], base64.b64encode(np_state[1].tobytes()).decode(), *map(float, np_state[2:])],
            "torch": _b64(torch.get_rng_state()),
            "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype=np.uint32), int(pos), int(has_gauss),
                         cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
