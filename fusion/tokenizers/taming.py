"""Deprecated: taming's VQGAN names moved to ``fusion.interop.taming`` (foreign formats live in
``fusion/interop/``). This module re-exports them for one release."""

from __future__ import annotations

import warnings

from fusion.interop.taming import (  # noqa: F401
    HF_PREFIX,
    OUR_CODEBOOK,
    TAMING_CODEBOOK,
    from_taming_state,
    to_taming_state,
)

warnings.warn("fusion.tokenizers.taming is deprecated: import fusion.interop.taming", DeprecationWarning,
              stacklevel=2)
