"""A training run folder's checkpoints: its step folders, each checked against its manifest, and the newest
complete one (which is what ``fusion.load``, ``fusion export`` and a resumed run take).

How strictly a folder is checked is the caller's choice: ``sizes`` (cheap: what loading for inference uses), or
``manifest_problems`` with every sha256 (what a resumed run uses: ``train.checkpointer`` shares the hashing over
its ranks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from fusion.checkpoint_layout import MANIFEST, MODEL_CONFIG, STEP_GLOB
from fusion.files import file_record, read_json

log = logging.getLogger(__name__)

Verify = Callable[[Path], list[str]]  # a step folder -> what is wrong with it ([] when complete)


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


def sizes(folder: Path) -> list[str]:
    """Every file present with its manifest size."""
    return manifest_problems(folder, hashes=False)


def newest_complete(run_dir: str | os.PathLike, verify: Verify, *, warn: bool = True) -> Path | None:
    """The newest step folder that ``verify`` finds complete; None when the run folder has no step folders.

    An incomplete folder is skipped with a warning naming the bad files. Step folders none of which is complete
    raise: a new run there would prune them, and they may be all there is.
    """
    folders = step_folders(run_dir)
    for folder in folders:
        problems = verify(folder)
        if not problems:
            return folder
        if warn:
            log.warning("checkpoint %s is incomplete or corrupt, falling back to an older one: %s", folder,
                        "; ".join(problems))
    if folders:
        raise FileNotFoundError(f"{run_dir} holds {len(folders)} step folder(s) but no complete checkpoint (see the "
                                f"warnings above); move them away to start a new run there")
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder as it is; a training run folder -> its newest complete step folder (sizes checked)."""
    path = Path(path)
    if (path / MODEL_CONFIG).is_file() or not path.is_dir():
        return path
    folder = newest_complete(path, sizes)
    if folder is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint folder ({MODEL_CONFIG} is missing) nor a training "
                                f"run folder with a {STEP_GLOB} checkpoint")
    return folder
