"""Deprecated: the safe Lightning ``vqgan.ckpt`` reader moved to ``fusion.interop.lightning_ckpt`` (foreign formats
live in ``fusion/interop/``). This module re-exports it for one release."""

from __future__ import annotations

import warnings

from fusion.interop.lightning_ckpt import LIGHTNING_GLOBALS, load_lightning_state  # noqa: F401

warnings.warn("fusion.tokenizers.lightning_ckpt is deprecated: import fusion.interop.lightning_ckpt",
              DeprecationWarning, stacklevel=2)
