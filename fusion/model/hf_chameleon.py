"""Deprecated: HF Chameleon's layout moved to ``fusion.interop.hf_chameleon`` (foreign formats live in
``fusion/interop/``). This module re-exports it for one release."""

from __future__ import annotations

import warnings

from fusion.interop.hf_chameleon import (  # noqa: F401
    BOI_TOKEN,
    EOI_TOKEN,
    GLOBAL_MAP,
    IMAGE_PREFIX,
    LAYER_MAP,
    RELEASED,
    TOKENIZER_FILES,
    VQ_PREFIX,
    convert_hf_chameleon,
    hf_to_fusion_state,
    image_code_of,
    image_token_name,
    load_hf_state_dict,
    model_config_from_hf,
    released_vocab,
    vocab_from_hf_config,
    vocabulary_map,
)

warnings.warn("fusion.model.hf_chameleon is deprecated: import fusion.interop.hf_chameleon", DeprecationWarning,
              stacklevel=2)
