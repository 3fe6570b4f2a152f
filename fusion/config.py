"""Every configuration dataclass and its named presets, in one import.

Each lives beside the code it configures; this module is the index:
``ModelConfig.preset("tiny", vocab)``, ``VQConfig.preset("chameleon")``, ``TrainConfig.preset("1b")``.
"""

from fusion.model.config import MODEL_PRESETS, ModelConfig
from fusion.tokenizers.image import PRESETS as VQ_PRESETS
from fusion.tokenizers.image import VQConfig
from fusion.train.loop import TRAIN_PRESETS, TrainConfig
from fusion.train.vq import VQTrainConfig

__all__ = ["MODEL_PRESETS", "ModelConfig", "VQ_PRESETS", "VQConfig", "TRAIN_PRESETS", "TrainConfig", "VQTrainConfig"]
