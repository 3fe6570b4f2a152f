"""Training run folders: ``step_NNNNNNN/`` checkpoints built under a temp name, sealed by a manifest, pruned.

A step folder is built as ``.step_NNNNNNN.tmp``; when every rank has written its part, the ranks hash the
files (each a share), rank 0 writes ``manifest.json`` and renames the folder into place. A crash (or a full
disk) at any point leaves the previous checkpoints complete; leftover temp folders are removed on resume. On
resume the newest step folder whose files match their manifest (sizes and sha256) wins; a truncated or
corrupt one is skipped with a warning naming the bad file.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fusion.checkpoint import (
    MANIFEST,
    TMP_STEP_GLOB,
    TRAINER_STATE,
    manifest_problems,
    step_folders,
    step_name,
    tmp_step_name,
)
from fusion.files import file_record, read_json, write_json
from fusion.train.distributed import DistInfo, barrier, gather_objects, together

log = logging.getLogger(__name__)


def begin(out_dir: Path, step: int, info: DistInfo) -> Path:
    """A fresh, empty temp folder for the checkpoint of ``step`` (made by rank 0, seen by all)."""
    tmp = out_dir / tmp_step_name(step)

    def make() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    together(make, main_only=True)
    return tmp


def seal(out_dir: Path, tmp: Path, step: int, info: DistInfo, keep_last: int) -> Path:
    """Hash the finished temp folder (shared over ranks), write its manifest, rename it into place, prune."""
    barrier()  # every rank's files are written
    names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    mine = together(lambda: {n: file_record(tmp / n) for n in names[info.rank::info.world_size]})
    records = {k: v for part in gather_objects(mine) for k, v in part.items()}
    final = out_dir / step_name(step)

    def commit() -> None:
        write_json(tmp / MANIFEST, {"step": step, "files": records})
        if final.exists():  # a re-save of the same step: a directory cannot be renamed over a non-empty one
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(out_dir, keep_last)

    together(commit, main_only=True)
    return final


def discard(tmp: Path, info: DistInfo) -> None:
    """Remove an unfinished temp folder (rank 0)."""
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_leftovers(out_dir: Path, info: DistInfo) -> None:
    """Remove temp folders a killed run left behind."""
    if info.is_main:
        for tmp in Path(out_dir).glob(TMP_STEP_GLOB):
            log.warning("removing %s, an unfinished checkpoint left by an earlier run", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def newest_complete(out_dir: str | os.PathLike, info: DistInfo) -> Path | None:
    """The newest step folder whose files match their manifest (every rank hashes a share); None for a new run.

    Step folders none of which is complete raise: starting afresh would prune them, and they may be all there is.
    """
    folders = step_folders(out_dir)
    for folder in folders:
        part = manifest_problems(folder, part=(info.rank, info.world_size))
        problems = sorted({p for rank_part in gather_objects(part) for p in rank_part})
        if not problems:
            return folder
        if info.is_main:
            log.warning("checkpoint %s is incomplete or corrupt, falling back to an older one: %s", folder,
                        "; ".join(problems))
    if folders:
        raise FileNotFoundError(f"{out_dir} holds {len(folders)} step folder(s) but no complete checkpoint (see the "
                                f"warnings above); move them away to start a new run there")
    return None


def prune(out_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step folders."""
    for folder in step_folders(out_dir)[max(keep_last, 1):]:
        shutil.rmtree(folder)


def load_trainer_state(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder) / TRAINER_STATE)


def config_diff(saved: dict, current: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``field: saved -> now`` for every field that differs (keys in ``ignore`` excepted)."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
