"""fusion: an early-fusion mixed-modal token model. Text and images in one vocabulary, one decoder.

    import fusion
    model = fusion.load("demo_out/checkpoint")
    doc = model.generate("a large red circle:", mode="image")    # a list of prompts gives a list
    doc.to_html("out.html")

Names are imported on first use, so ``import fusion`` (and ``fusion --help``) does not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Fusion": "fusion.api",
    "GenerationConfig": "fusion.inference.config",
    "Generation": "fusion.inference.generate",
    "ModelConfig": "fusion.model.config",
    "Vocab": "fusion.vocab",
    "Document": "fusion.document",
    "Text": "fusion.document",
    "Image": "fusion.document",
}
__all__ = [*_EXPORTS, "load", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fusion' has no attribute {name!r}")


def load(path, *, device=None, dtype=None, **kwargs):
    """Load a checkpoint folder (trained or converted) as a ready-to-generate ``fusion.Fusion``
    (``Fusion.from_pretrained``; e.g. ``check_finite=False``)."""
    from fusion.api import Fusion

    return Fusion.from_pretrained(path, device=device, dtype=dtype, **kwargs)
