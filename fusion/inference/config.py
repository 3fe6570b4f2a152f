"""``GenerationConfig``: the one list of sampling knobs, read by the API, the CLI (flags made from its fields) and
the decode loop, and saved in a checkpoint as ``generation_config.json`` (its defaults). HF's names where HF has
the knob; ``mode`` and ``image_guidance_scale`` are fusion's own."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from fusion import checkpoint_layout as layout

MODES = ("text", "image", "mixed")
GUIDANCE_FORMS = ("probs", "logits")
MAX_WINDOW = 64
COUPLINGS = ("maximal", "gumbel", "independent")
# Speculative decoding when a call leaves ``speculative`` unset, by device type: fixed, never measured at run time.
# The benchmark behind each value: benchmarks/RESULTS.md, "Speculative decoding".
DEFAULT_SPECULATIVE = {"cpu": False, "cuda": False}
# HF generation options fusion has under another name or not at all: what to use instead.
HF_HINTS = {"max_length": "max_new_tokens (fusion counts new tokens only)", "cfg_scale": "guidance_scale",
            "stop": "stop_strings", "num_beams": "sampling or do_sample=False (there is no beam search)"}


def _knob(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GenerationConfig:
    """How to continue a prompt; every value is checked when the config is made."""

    mode: str = _knob("mixed", "text (no images), image (one image at once, then stop) or mixed")
    max_new_tokens: int | None = _knob(None, "new tokens at most; default: one image in mode image, else 256 "
                                             "(capped by the context)")
    do_sample: bool = _knob(True, "sample; off: greedy (as temperature 0)")
    temperature: float = _knob(1.0, "softmax temperature; 0 is greedy")
    top_k: int = _knob(0, "keep the k most likely tokens (0: off)")
    top_p: float = _knob(1.0, "keep the smallest set of tokens whose probability reaches p (1: off)")
    repetition_penalty: float = _knob(1.0, "CTRL's penalty on tokens already in the context (1: off)")
    guidance_scale: float = _knob(1.0, "classifier-free guidance of image tokens (1: off)")
    image_guidance_scale: float | None = _knob(None, "with guidance: Chameleon's 3-way guidance, this scale for "
                                                     "the prompt's images")
    guidance_form: str = field(default="probs", metadata={
        "choices": GUIDANCE_FORMS, "help": "mix the guided copies' probabilities (clamped at 0), or their logits as "
                                           "Chameleon / LlamaGen / HF do (see inference/sampling.py)"})
    stop_strings: tuple[str, ...] = _knob((), "end a row once its text holds one of these")
    num_return_sequences: int = _knob(1, "samples per prompt; results come grouped by prompt")
    speculative: bool | None = _knob(None, "speculative Jacobi decoding of images: a pass verifies a window of "
                                           "guessed codes, same distribution, other samples for a seed; default: "
                                           "per device (DEFAULT_SPECULATIVE)")
    speculative_window: int = _knob(16, "tokens a speculative pass feeds per image row (the last + W-1 drafts)")
    speculative_coupling: str = field(default="maximal", metadata={
        "choices": COUPLINGS, "help": "how a draft follows from pass to pass: maximal (keep the old draft with "
                                      "probability min(1, p/q), else redraw; MC-SJD), gumbel (same draws), "
                                      "independent (SJD)"})

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.guidance_form not in GUIDANCE_FORMS:
            raise ValueError(f"guidance_form must be one of {GUIDANCE_FORMS}, got {self.guidance_form!r}")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if isinstance(self.num_return_sequences, bool) or not isinstance(self.num_return_sequences, int) \
                or self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be a positive int, got {self.num_return_sequences!r}")
        _check("temperature", self.temperature, lambda t: t >= 0, "must be >= 0 (0 = greedy)")
        _check("top_k", self.top_k, lambda k: k >= 0 and k == int(k),
               "must be a non-negative integer (0 = off)")
        _check("top_p", self.top_p, lambda p: 0 < p <= 1, "must lie in (0, 1]")
        _check("repetition_penalty", self.repetition_penalty, lambda r: r > 0, "must be > 0 (1 = off)")
        _check("guidance_scale", self.guidance_scale, lambda g: g >= 0, "must be >= 0 (1 = no guidance)")
        if self.image_guidance_scale is not None:
            _check("image_guidance_scale", self.image_guidance_scale, lambda g: g >= 0, "must be >= 0")
        if self.speculative_coupling not in COUPLINGS:
            raise ValueError(f"speculative_coupling must be one of {COUPLINGS}, got {self.speculative_coupling!r}")
        if self.speculative not in (None, True, False):
            raise ValueError(f"speculative must be True, False or None (the device's default), "
                             f"got {self.speculative!r}")
        if isinstance(self.speculative_window, bool) or not isinstance(self.speculative_window, int) \
                or not 2 <= self.speculative_window <= MAX_WINDOW:
            raise ValueError(f"speculative_window must be an int in [2, {MAX_WINDOW}], got {self.speculative_window!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop strings must be non-empty str, got {self.stop_strings!r}")

    @property
    def sampling_temperature(self) -> float:
        """The temperature the sampler uses: 0 (greedy) when ``do_sample`` is off."""
        return float(self.temperature) if self.do_sample else 0.0

    @property
    def guided(self) -> bool:
        """Whether image tokens are guided (mode text never is)."""
        return self.mode != "text" and (self.guidance_scale != 1.0 or self.image_guidance_scale not in (None, 1.0))

    def resolved(self, device_type: str, budget: int) -> GenerationConfig:
        """A complete config: ``max_new_tokens`` (if unset) is ``budget``, ``speculative`` (if unset) the default
        of ``device_type`` ("cpu", "cuda", ...)."""
        return self.replace(max_new_tokens=self.max_new_tokens or budget,
                            speculative=DEFAULT_SPECULATIVE.get(device_type, False) if self.speculative is None
                            else self.speculative)

    def replace(self, **changes) -> GenerationConfig:
        """A copy with ``changes``; unknown names are a TypeError naming them."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            hints = "".join(f"; for {k} use {HF_HINTS[k]}" for k in unknown if k in HF_HINTS)
            raise TypeError(f"unknown generation options {unknown}{hints}; GenerationConfig has "
                            f"{[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop_strings"] = list(self.stop_strings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GenerationConfig:
        """The inverse of ``to_dict``; unknown keys are a ValueError naming them."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown GenerationConfig keys {unknown}")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict) -> tuple[GenerationConfig, list[str]]:
        """An HF ``generation_config.json`` dict -> (the config, the HF keys dropped).

        Knobs with the same meaning keep their values; token ids (the vocabulary holds them), HF bookkeeping and
        options fusion lacks are dropped. Keys the file does not set keep fusion's defaults.
        """
        ours = {f.name for f in fields(cls)} - {"mode", "image_guidance_scale", "guidance_form"}
        kept = {k: v for k, v in hf.items() if k in ours and v is not None}
        if "guidance_scale" in kept:
            kept["guidance_form"] = "logits"  # HF's classifier-free guidance mixes log-probabilities
        if "stop_strings" in kept and isinstance(kept["stop_strings"], str):
            kept["stop_strings"] = [kept["stop_strings"]]
        return cls(**kept), sorted(set(hf) - set(kept))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``generation_config.json`` into ``directory`` (atomically); returns its path."""
        from fusion.files import write_json  # here, not above: `fusion generate --help` stays free of torch

        path = Path(directory) / layout.GENERATION_CONFIG
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GenerationConfig:
        """A checkpoint folder's ``generation_config.json``; the defaults when the folder has none."""
        path = Path(directory) / layout.GENERATION_CONFIG
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e


def _check(name: str, value, ok: Callable[[float], bool], rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} {rule}, got {value!r}")
