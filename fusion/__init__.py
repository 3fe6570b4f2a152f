"""fusion: an early-fusion mixed-modal token model. Text and images in one vocabulary, one decoder.

    import fusion
    model = fusion.load("demo_out/checkpoint")
    doc = model.generate(["a large red circle:"], mode="image")
    doc.to_html("out.html")
"""

from fusion.document import Document, Image, Text

__version__ = "0.1.0"
__all__ = ["Document", "Image", "Text", "load", "__version__"]


def load(path, *, device=None, dtype=None):
    """Load a checkpoint folder (trained or converted) as a ready-to-generate ``fusion.api.Fusion``."""
    from fusion.api import Fusion

    return Fusion.load(path, device=device, dtype=dtype)
