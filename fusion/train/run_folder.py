"""Training run folders: ``step_NNNNNNN/`` checkpoints built under a temp name, sealed by a manifest, pruned.

A step folder is built as ``.step_NNNNNNN.tmp``; when every rank has written its part, the ranks hash the
files (each a share), rank 0 writes ``manifest.json`` and renames the folder into place. A crash (or a full
disk) at any point leaves the previous checkpoints complete; leftover temp folders are removed on resume. On
resume the newest step folder whose files match their manifest (sizes and sha256) wins; a truncated or
corrupt one is skipped with a warning naming the bad file.

Everything here is one process's file work; which ranks run it, and when, is ``checkpointer.Checkpointer``'s.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fusion.checkpoint_layout import MANIFEST, MODEL_CONFIG, TMP_STEP_GLOB, TRAINER_STATE, step_name
from fusion.files import file_record, read_json, write_json
from fusion.run_checkpoints import step_folders

log = logging.getLogger(__name__)


def fresh_folder(tmp: Path) -> None:
    """An empty temp folder for a checkpoint (whatever an earlier try left there is removed)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def file_names(folder: Path) -> list[str]:
    """Every file under ``folder``, relative to it, sorted: the same list on every rank."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def file_records(folder: Path, names: list[str]) -> dict[str, dict]:
    """Size and sha256 of each of ``names``: this process's share of a manifest."""
    return {n: file_record(folder / n) for n in names}


def commit(out_dir: Path, tmp: Path, step: int, records: dict[str, dict], keep_last: int) -> Path:
    """Write the manifest into the finished temp folder, rename it into place, prune the oldest step folders."""
    final = out_dir / step_name(step)
    write_json(tmp / MANIFEST, {"step": step, "files": records})
    if final.exists():  # a re-save of the same step: a directory cannot be renamed over a non-empty one
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(out_dir, keep_last)
    return final


def clean_leftovers(out_dir: Path) -> None:
    """Remove temp folders a killed run left behind."""
    for tmp in Path(out_dir).glob(TMP_STEP_GLOB):
        log.warning("removing %s, an unfinished checkpoint left by an earlier run", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def prune(out_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step folders."""
    for folder in step_folders(out_dir)[max(keep_last, 1):]:
        shutil.rmtree(folder)


def load_trainer_state(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder) / TRAINER_STATE)


def load_model_config(folder: str | os.PathLike) -> dict:
    """The model config a step folder was saved with: its ``config.json``, the one copy (folders saved by earlier
    versions repeat it in trainer_state.json as ``model_config``, which nothing reads)."""
    return read_json(Path(folder) / MODEL_CONFIG)


def config_diff(saved: dict, current: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``field: saved -> now`` for every field that differs (keys in ``ignore`` excepted)."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
