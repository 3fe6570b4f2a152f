"""Modules moved to a new home stay importable at their old path for one release: importing one warns, and its
names are the new module's own objects. Library code and the other tests import only the new paths."""

import importlib
import sys

import pytest

# (old module, new module, the names the old one re-exports)
MOVED = [
    ("fusion.checkpoint", "fusion.checkpoint_layout",
     ["MODEL_CONFIG", "MODEL_WEIGHTS", "MODEL_INDEX", "TEXT_MODEL", "VQ_CONFIG", "VQ_WEIGHTS", "GENERATION_CONFIG",
      "META_PARAMS", "METRICS", "TOKENS", "TRAINER_STATE", "TRAINING_STATE", "MANIFEST", "STEP_GLOB", "step_name",
      "tmp_step_name", "model_shard_name"]),
    ("fusion.checkpoint", "fusion.run_checkpoints", ["manifest_problems", "resolve_checkpoint", "step_folders"]),
    ("fusion.checkpoint", "fusion.files", ["first_present"]),
    ("fusion.model.hf_chameleon", "fusion.interop.hf_chameleon",
     ["BOI_TOKEN", "EOI_TOKEN", "GLOBAL_MAP", "IMAGE_PREFIX", "LAYER_MAP", "RELEASED", "TOKENIZER_FILES", "VQ_PREFIX",
      "convert_hf_chameleon", "hf_to_fusion_state", "image_code_of", "image_token_name", "load_hf_state_dict",
      "model_config_from_hf", "released_vocab", "vocab_from_hf_config", "vocabulary_map"]),
    ("fusion.model.meta_chameleon", "fusion.interop.meta_chameleon",
     ["COLUMN_PARALLEL", "CONTEXT", "GLOBAL_KEYS", "IGNORED", "LAYER_KEY", "LONG_CONTEXT", "REPLICATED", "ROW_PARALLEL",
      "convert_meta_chameleon", "ffn_dim", "find_model_dir", "find_tokenizer_dir", "interleaved_to_half", "load_shards",
      "meta_to_fusion_state", "model_config_from_params", "read_params", "shard_paths", "vocab_from_hf_config",
      "vocab_from_text_tokenizer"]),
    ("fusion.tokenizers.taming", "fusion.interop.taming",
     ["HF_PREFIX", "OUR_CODEBOOK", "TAMING_CODEBOOK", "from_taming_state", "to_taming_state"]),
    ("fusion.tokenizers.lightning_ckpt", "fusion.interop.lightning_ckpt",
     ["LIGHTNING_GLOBALS", "load_lightning_state"]),
]


@pytest.mark.parametrize(("old", "new", "names"), MOVED, ids=[f"{old}->{new}" for old, new, _ in MOVED])
def test_an_old_path_warns_and_reexports_the_new_objects(old, new, names):
    target = importlib.import_module(new)
    sys.modules.pop(old, None)  # a fresh import, so its warning fires here
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        shim = importlib.import_module(old)
    assert [n for n in names if getattr(shim, n) is not getattr(target, n)] == []


def test_load_decoder_warns_and_is_transformer_from_pretrained(tmp_path):
    import torch

    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.train.export import load_decoder
    from fusion.vocab import Vocab

    torch.manual_seed(0)
    Transformer(ModelConfig.preset("tiny", Vocab.build(40, 16), n_layers=1)).save_pretrained(tmp_path)
    with pytest.warns(DeprecationWarning, match="Transformer.from_pretrained"):
        old = load_decoder(tmp_path, dtype=torch.float64)
    new = Transformer.from_pretrained(tmp_path, dtype=torch.float64)
    ids = torch.tensor([[1, 5, 9]])
    assert old.embed.weight.dtype == torch.float64 and torch.equal(old(ids), new(ids))
