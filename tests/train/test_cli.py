"""``fusion train``'s command line: how ``--preset`` picks the training config (parsed only, nothing trains)."""

import pytest

from fusion.cli.train import build_parser, train_config
from fusion.model.config import MODEL_PRESETS
from fusion.train.config import TRAIN_PRESETS, TrainConfig


def parse(*flags: str):
    return build_parser().parse_args(["docs.jsonl", *flags])


def test_a_model_only_preset_trains_with_the_defaults_and_says_which(caplog):
    assert "chameleon-7b" in MODEL_PRESETS and "chameleon-7b" not in TRAIN_PRESETS
    args = parse("--preset", "chameleon-7b")
    with caplog.at_level("WARNING", logger="fusion.cli.train"):
        cfg = train_config(args)
    assert cfg == TrainConfig() and args.preset == "chameleon-7b"  # the fresh model still takes its shape
    assert caplog.messages == [
        "--preset chameleon-7b is a model preset only (training presets: 1b, small, tiny): training uses "
        "TrainConfig's defaults and the flags given: steps=1000, batch_size=8, seq_len=512, lr=0.0003, warmup=100"]


def test_the_warning_names_the_values_flags_set(caplog):
    with caplog.at_level("WARNING", logger="fusion.cli.train"):
        cfg = train_config(parse("--preset", "chameleon-34b", "--steps", "2000", "--lr", "1e-4"))
    assert cfg == TrainConfig(steps=2000, lr=1e-4)
    assert "steps=2000, batch_size=8, seq_len=512, lr=0.0001, warmup=100" in caplog.messages[-1]


def test_a_training_preset_is_used_without_a_warning(caplog):
    with caplog.at_level("WARNING", logger="fusion.cli.train"):
        cfg = train_config(parse("--preset", "small", "--seq-len", "1024"))
    assert cfg == TrainConfig.preset("small", seq_len=1024) and not caplog.messages


def test_an_unknown_preset_is_an_argparse_error_listing_the_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("--preset", "chameleon-70b")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "chameleon-70b" in err
    assert all(repr(name) in err for name in MODEL_PRESETS.keys() | TRAIN_PRESETS.keys())
