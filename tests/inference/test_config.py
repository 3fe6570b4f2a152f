"""GenerationConfig: defaults, checks, HF-style overrides, and the CLI flags made from its fields."""

import argparse

import pytest

from fusion.cli.flags import add_config_flags, config_overrides
from fusion.inference.config import MODES, GenerationConfig


def test_defaults_and_overrides():
    cfg = GenerationConfig()
    assert (cfg.mode, cfg.max_new_tokens, cfg.sampling_temperature, cfg.guided) == ("mixed", None, 1.0, False)
    greedy = cfg.replace(do_sample=False, temperature=0.7)
    assert greedy.sampling_temperature == 0.0 and cfg.sampling_temperature == 1.0  # frozen: cfg unchanged
    assert cfg.replace(stop_strings="x").stop_strings == ("x",)
    assert cfg.replace(guidance_scale=2.0).guided and not cfg.replace(guidance_scale=2.0, mode="text").guided
    assert cfg.replace(image_guidance_scale=1.5).guided
    with pytest.raises(TypeError, match="cfg_scale"):
        cfg.replace(cfg_scale=2.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="image_guidance_scale"):
        GenerationConfig(image_guidance_scale=-1.0)


def test_cli_flags_are_made_from_the_fields():
    ap = argparse.ArgumentParser()
    add_config_flags(ap, GenerationConfig, choices={"mode": MODES})
    args = ap.parse_args(["--mode", "image", "--guidance-scale", "3", "--no-do-sample", "--stop-strings", ".", "!",
                          "--top-k", "5", "--image-guidance-scale", "1.2", "--num-return-sequences", "2"])
    cfg = GenerationConfig(**config_overrides(args, GenerationConfig))
    assert cfg == GenerationConfig(mode="image", guidance_scale=3.0, do_sample=False, stop_strings=(".", "!"),
                                   top_k=5, image_guidance_scale=1.2, num_return_sequences=2)
    assert config_overrides(ap.parse_args([]), GenerationConfig) == {}  # untyped flags keep the defaults
    with pytest.raises(SystemExit):
        ap.parse_args(["--mode", "video"])


def test_num_return_sequences_and_hf_hints():
    assert GenerationConfig(num_return_sequences=3).num_return_sequences == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_return_sequences"):
            GenerationConfig(num_return_sequences=bad)
    with pytest.raises(TypeError, match="for max_length use max_new_tokens"):
        GenerationConfig().replace(max_length=20)
    with pytest.raises(TypeError, match="for cfg_scale use guidance_scale"):
        GenerationConfig().replace(cfg_scale=3.0)


def test_hf_generation_config_is_translated_not_copied():
    # what an HF generation_config.json of a Chameleon / Anole release may hold
    hf = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "max_length": 4096,
          "do_sample": True, "temperature": 0.9, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.1,
          "num_return_sequences": 2, "guidance_scale": 3.0, "stop_strings": "</s>", "max_new_tokens": 500,
          "transformers_version": "4.45.0", "num_beams": 1}
    cfg, dropped = GenerationConfig.from_hf(hf)
    assert cfg == GenerationConfig(do_sample=True, temperature=0.9, top_p=0.8, top_k=40, repetition_penalty=1.1,
                                   num_return_sequences=2, guidance_scale=3.0, stop_strings=("</s>",),
                                   max_new_tokens=500, guidance_form="logits")  # HF guides log-probabilities
    assert dropped == sorted(["_from_model_config", "bos_token_id", "eos_token_id", "pad_token_id", "max_length",
                              "transformers_version", "num_beams"])
    assert GenerationConfig.from_hf({"do_sample": False})[0].sampling_temperature == 0.0
    assert GenerationConfig.from_hf({"top_k": None})[0] == GenerationConfig()  # unset values keep fusion's defaults
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig.from_hf({"top_p": 2.0})


def test_save_and_load_in_a_checkpoint_folder(tmp_path):
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig()  # a folder without one: the defaults
    cfg = GenerationConfig(mode="image", guidance_scale=2.5, stop_strings=("!",), num_return_sequences=2)
    path = cfg.save_pretrained(tmp_path)
    assert path == tmp_path / "generation_config.json"
    assert GenerationConfig.from_pretrained(tmp_path) == cfg
    path.write_text('{"temprature": 0.5}')
    with pytest.raises(ValueError, match=r"generation_config.json: unknown GenerationConfig keys \['temprature'\]"):
        GenerationConfig.from_pretrained(tmp_path)


def test_speculative_knobs_are_checked_and_resolved_per_device():
    from fusion.inference.config import DEFAULT_SPECULATIVE

    cfg = GenerationConfig()
    assert cfg.speculative is None  # the device's default, resolved when a call starts
    for device, default in DEFAULT_SPECULATIVE.items():
        assert cfg.resolved(device, 7) == cfg.replace(max_new_tokens=7, speculative=default)
    assert cfg.replace(speculative=True, max_new_tokens=3).resolved("cpu", 7).speculative is True  # set wins
    assert cfg.replace(max_new_tokens=3).resolved("cpu", 7).max_new_tokens == 3
    assert cfg.resolved("mps", 7).speculative is False  # a device without a measured default stays plain
    for bad in (1, 65, 2.0, True):
        with pytest.raises(ValueError, match="speculative_window"):
            GenerationConfig(speculative_window=bad)
    with pytest.raises(ValueError, match="speculative_coupling"):
        GenerationConfig(speculative_coupling="optimal")
    with pytest.raises(ValueError, match="speculative must be"):
        GenerationConfig(speculative="yes")
    ap = argparse.ArgumentParser()
    add_config_flags(ap, GenerationConfig)
    args = ap.parse_args(["--speculative", "--speculative-window", "8", "--speculative-coupling", "gumbel"])
    assert GenerationConfig(**config_overrides(args, GenerationConfig)) == GenerationConfig(
        speculative=True, speculative_window=8, speculative_coupling="gumbel")
    assert config_overrides(ap.parse_args(["--no-speculative"]), GenerationConfig) == {"speculative": False}
