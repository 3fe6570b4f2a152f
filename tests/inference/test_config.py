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
                          "--top-k", "5", "--image-guidance-scale", "1.2"])
    cfg = GenerationConfig(**config_overrides(args, GenerationConfig))
    assert cfg == GenerationConfig(mode="image", guidance_scale=3.0, do_sample=False, stop_strings=(".", "!"),
                                   top_k=5, image_guidance_scale=1.2)
    assert config_overrides(ap.parse_args([]), GenerationConfig) == {}  # untyped flags keep the defaults
    with pytest.raises(SystemExit):
        ap.parse_args(["--mode", "video"])
