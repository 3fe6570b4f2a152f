"""A run's checkpoints, saved and resumed on one process or many: ``Checkpointer`` owns which ranks do what.

Every collective of a save or a resume is called here, by every rank, inside a named phase; work for rank 0
alone is wrapped where it happens (``together(..., main_only=True)`` hands its error to every rank), so a
caller never places an ``is_main`` check. A collective that a rank does not reach within the process group's
timeout (``--dist-timeout-s``) fails on the ranks waiting at it with ``CheckpointTimeout``, naming the rank,
the checkpoint and the phase, instead of the run hanging. The shape follows torchtitan's ``CheckpointManager``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from fusion import run_checkpoints
from fusion.checkpoint_layout import MODEL_CONFIG, TRAINER_STATE, TRAINING_STATE, step_name, tmp_step_name
from fusion.files import write_json
from fusion.run_checkpoints import manifest_problems, step_folders
from fusion.train import run_folder
from fusion.train.checkpointing import (
    disk_full_error,
    is_disk_full,
    load_state,
    non_finite,
    save_state,
    state_bytes,
    training_state,
)
from fusion.train.distributed import DistInfo, barrier, gather_objects, late_rank, timed_out, together
from fusion.train.export import export_weights


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient, or non-finite weights to save."""


class CheckpointTimeout(RuntimeError):
    """A rank did not reach one of a checkpoint's collectives within the process group's timeout."""


class Checkpointer:
    """The step folders of the run in ``out_dir``: ``save`` one, find the ``latest`` complete one, ``restore`` it."""

    def __init__(self, out_dir: str | os.PathLike, info: DistInfo, *, keep_last: int, timeout_s: float) -> None:
        self.out_dir, self.info = Path(out_dir), info
        self.keep_last, self.timeout_s = keep_last, timeout_s

    def previous(self) -> Path | None:
        """The newest step folder on disk: what an error points the user to."""
        return next(iter(step_folders(self.out_dir)), None)

    # ------------------------------------------------------------ save

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokenizer,
             trainer_state: dict, *, export: bool = False) -> Path:
        """Write ``out_dir/step_NNNNNNN/`` (every rank its shards; ``export`` adds the HF layout). Non-finite
        weights raise ``TrainingDiverged``; a full disk ``CheckpointDiskFull``; the older checkpoints stay intact."""
        what = f"save of step {step}"
        state = training_state(model, optimizer)
        with self._phase(what, "check weights"):
            bad = sorted({k for part in gather_objects(non_finite(state["model"])) for k in part})
        if bad:  # every rank sees the same list, so every rank stops alike
            raise TrainingDiverged(f"refusing to save a model with non-finite weights ({bad[:3]}); the last good "
                                   f"checkpoint is {self.previous()}")
        previous, tmp = self.previous(), self.out_dir / tmp_step_name(step)
        try:
            with self._phase(what, "begin"):
                together(lambda: run_folder.fresh_folder(tmp), main_only=True)
            with self._phase(what, "write state"):
                save_state(state, tmp / TRAINING_STATE)
            with self._phase(what, "write run files"):
                together(lambda: self._run_files(tmp, model, tokenizer, trainer_state), main_only=True)
            if export:
                with self._phase(what, "export"):
                    export_weights(tmp / TRAINING_STATE, tmp, info=self.info)
            return self._seal(what, tmp, step)
        except (OSError, CheckpointException) as e:
            if is_disk_full(e):
                model_bytes = state_bytes(state["model"]) if export else 0
                raise disk_full_error(tmp, state_bytes(state) + model_bytes, previous) from None
            raise
        finally:  # no collective here: the ranks may be leaving from different phases
            if self.info.is_main:
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _run_files(folder: Path, model: torch.nn.Module, tokenizer, trainer_state: dict) -> None:
        """What rank 0 adds beside the shards: the model config (its one copy), the tokenizers, the trainer state."""
        write_json(folder / MODEL_CONFIG, model.cfg.to_dict())
        tokenizer.save_pretrained(folder)
        write_json(folder / TRAINER_STATE, trainer_state)

    def _seal(self, what: str, tmp: Path, step: int) -> Path:
        """Hash the finished temp folder (each rank a share); rank 0 writes the manifest, renames it, prunes."""
        with self._phase(what, "seal"):
            barrier()  # every rank's files are written
            names = run_folder.file_names(tmp)
            share = names[self.info.rank::self.info.world_size]
            mine = together(lambda: run_folder.file_records(tmp, share))
            records = {k: v for part in gather_objects(mine) for k, v in part.items()}
            together(lambda: run_folder.commit(self.out_dir, tmp, step, records, self.keep_last), main_only=True)
        return self.out_dir / step_name(step)

    # ------------------------------------------------------------ resume

    def latest(self) -> Path | None:
        """The newest complete step folder (None for a new run), once rank 0 removed a killed run's temp folders.

        Every rank hashes a share of each candidate's files and all see the union of what is wrong.
        """
        with self._phase("resume", "clean leftovers"):
            together(lambda: run_folder.clean_leftovers(self.out_dir), main_only=True)
        return run_checkpoints.newest_complete(self.out_dir, self._problems, warn=self.info.is_main)

    def _problems(self, folder: Path) -> list[str]:
        with self._phase(f"resume from {folder.name}", "verify"):
            part = manifest_problems(folder, part=(self.info.rank, self.info.world_size))
            return sorted({p for rank_part in gather_objects(part) for p in rank_part})

    @staticmethod
    def saved_state(folder: str | os.PathLike) -> tuple[dict, dict]:
        """A step folder's trainer state and model config (each rank reads them itself)."""
        return run_folder.load_trainer_state(folder), run_folder.load_model_config(folder)

    def restore(self, folder: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Model and optimizer state from ``folder`` into the live (possibly sharded) ones, on any number of ranks."""
        folder = Path(folder)
        with self._phase(f"resume from {folder.name}", "load state"):
            load_state(model, optimizer, folder / TRAINING_STATE)

    # ------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _phase(self, what: str, phase: str) -> Iterator[None]:
        """Turn a collective's timeout inside this phase into an error naming this rank, ``what`` and the phase."""
        try:
            yield
        except RuntimeError as e:
            if not self.info.enabled or isinstance(e, CheckpointTimeout) or not timed_out(e):
                raise
            late = late_rank(e)
            who = f"rank {late} did not reach it" if late is not None else "a rank did not reach this collective"
            raise CheckpointTimeout(f"rank {self.info.rank}: checkpoint {what} timed out in phase '{phase}' ({who} "
                                    f"within --dist-timeout-s {self.timeout_s:g} s)") from e
