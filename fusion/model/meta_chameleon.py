"""Deprecated: Meta's release layout moved to ``fusion.interop.meta_chameleon`` (foreign formats live in
``fusion/interop/``). This module re-exports it for one release."""

from __future__ import annotations

import warnings

from fusion.interop.meta_chameleon import (  # noqa: F401
    COLUMN_PARALLEL,
    CONTEXT,
    GLOBAL_KEYS,
    IGNORED,
    LAYER_KEY,
    LONG_CONTEXT,
    REPLICATED,
    ROW_PARALLEL,
    convert_meta_chameleon,
    ffn_dim,
    find_model_dir,
    find_tokenizer_dir,
    interleaved_to_half,
    load_shards,
    meta_to_fusion_state,
    model_config_from_params,
    read_params,
    shard_paths,
    vocab_from_hf_config,
    vocab_from_text_tokenizer,
)

warnings.warn("fusion.model.meta_chameleon is deprecated: import fusion.interop.meta_chameleon", DeprecationWarning,
              stacklevel=2)
