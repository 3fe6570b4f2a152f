"""Deprecated: ``fusion.checkpoint`` was split into ``fusion.checkpoint_layout`` (file names),
``fusion.run_checkpoints`` (finding a run's newest complete checkpoint) and ``fusion.files.first_present``.
This module re-exports them for one release."""

from __future__ import annotations

import warnings

from fusion.checkpoint_layout import *  # noqa: F403
from fusion.files import first_present  # noqa: F401
from fusion.run_checkpoints import manifest_problems, resolve_checkpoint, step_folders  # noqa: F401

warnings.warn("fusion.checkpoint is deprecated: file names are in fusion.checkpoint_layout, finding a run's "
              "checkpoint in fusion.run_checkpoints, first_present in fusion.files", DeprecationWarning, stacklevel=2)
