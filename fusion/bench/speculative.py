"""Speculative decoding of images against plain decoding: passes per image, images/s, and the cost of a pass.

    fusion bench generate --speculative [--checkpoint demo_out/checkpoint] [--device cpu] [--compile]

Plain and speculative run in the same process, on the same prompts (held-out captions of the synthetic world)
and seeds, alternating, so that the ratios hold on a noisy machine:
- per setting (batch 1 and 8; temperature 1.0 with top-k 100, and the checkpoint's own sampling; unguided and
  at the checkpoint's guidance scale): passes per image (decoder calls from boi to eoi, each counted once
  whatever its width or guidance copies), images/s, both as ratios to plain, image tokens per pass, and the
  synthetic world's oracle accuracy (colour and shape read back; meaningful for the demo's checkpoint). Every
  coupling and ``--windows`` width at the first setting.
- the cost of one window pass against one plain step, on the checkpoint's model and, on a GPU, on a random
  ``--preset`` model with Chameleon's 1024-code images (on random weights acceptance means nothing, so only the
  pass time is reported).
"""

from __future__ import annotations

import time

import torch

from fusion.api import Fusion
from fusion.bench.common import sync
from fusion.data.synthetic import SyntheticWorld, read_image
from fusion.demo.scoring import TEST_OFFSET, same
from fusion.document import Document
from fusion.inference.config import COUPLINGS, GenerationConfig
from fusion.inference.generate import Generation, complete_config, open_session
from fusion.interop.hf_chameleon import released_vocab
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.tokenizers.grammar import ids_to_close

TOP_K = 100


def settings(defaults: GenerationConfig) -> list[tuple[str, dict]]:
    """(name, sampling knobs): temperature 1.0 with top-k, and the checkpoint's own, each unguided and guided."""
    scale = defaults.guidance_scale if defaults.guidance_scale != 1.0 else 3.0
    own = dict(temperature=defaults.temperature, top_k=defaults.top_k, top_p=defaults.top_p)
    hot = dict(temperature=1.0, top_k=TOP_K, top_p=1.0)
    return [(f"T=1 top-k {TOP_K}", {**hot, "guidance_scale": 1.0}),
            (f"T=1 top-k {TOP_K}, guidance {scale}", {**hot, "guidance_scale": scale}),
            (f"checkpoint's (T={defaults.temperature})", {**own, "guidance_scale": 1.0}),
            (f"checkpoint's, guidance {scale}", {**own, "guidance_scale": scale})]


def measure(model: Fusion, scenes: list, batch: int, compile: bool, methods: dict[str, dict]) -> dict[str, dict]:
    """Images of every scene's caption, ``batch`` prompts a call, by each method (name -> knobs), the methods
    taking turns call by call so that a machine's drifts hit them alike (a first, untimed call compiles): per
    method images/s, passes per image and the oracle's accuracy."""
    prompts = [Document.of(s.caption() + ":") for s in scenes]
    configs = {name: model.generation_config.replace(mode="image", **knobs) for name, knobs in methods.items()}
    calls = [list(range(len(prompts)))[i:i + batch] for i in range(0, len(prompts), batch)]
    for config in configs.values():
        model.generate([prompts[i] for i in calls[0]], config, seed=calls[0], compile=compile)
    records = {name: Generation() for name in configs}
    docs: dict[str, list] = {name: [] for name in configs}
    seconds = dict.fromkeys(configs, 0.0)
    for rows in calls:
        for name, config in configs.items():
            part = Generation()
            sync(model.device)
            t = time.perf_counter()
            docs[name] += model.generate([prompts[i] for i in rows], config, seed=rows, compile=compile, record=part)
            sync(model.device)
            seconds[name] += time.perf_counter() - t
            records[name].image_passes += part.image_passes
            records[name].images += part.images
    out = {}
    for name in configs:
        hits = [same(read_image(d.images[0]) if d.images else None, s) for d, s in zip(docs[name], scenes, strict=True)]
        out[name] = {"images_s": len(prompts) / seconds[name], "passes": records[name].passes_per_image,
                     "oracle": sum(hits) / len(hits)}
    return out


def _row(setting: str, batch: int, method: str, got: dict, plain: dict, n_codes: int) -> dict:
    return {"setting": setting, "batch": batch, "method": method, "passes_per_image": round(got["passes"], 2),
            "pass_ratio": round(plain["passes"] / got["passes"], 2), "images_s": round(got["images_s"], 2),
            "speed_ratio": round(got["images_s"] / plain["images_s"], 2),
            "tokens_per_pass": round(ids_to_close(n_codes) / got["passes"], 2), "oracle": round(got["oracle"], 3)}


def checkpoint_rows(model: Fusion, opts) -> list[dict]:
    """Plain vs speculative per setting and batch size; every coupling and window at the first setting."""
    scenes = SyntheticWorld(0).scenes(opts.prompts, seed_offset=TEST_OFFSET)
    n_codes, rows = model.tokenizer.tokens_per_image, []
    for first, (name, knobs) in zip([True, False, False, False], settings(model.generation_config), strict=True):
        variants = [(c, w) for c in COUPLINGS for w in opts.windows] if first else [("maximal", opts.windows[0])]
        methods = {"plain": {**knobs, "speculative": False}}
        methods.update({f"speculative W={w} {c}": {**knobs, "speculative": True, "speculative_window": w,
                                                   "speculative_coupling": c} for c, w in variants})
        for batch in (1, 8):
            got = measure(model, scenes, batch, opts.compile, methods)
            rows += [_row(name, batch, method, stats, got["plain"], n_codes) for method, stats in got.items()]
    return rows


def pass_ms(model: Transformer, n_codes: int, batch: int, window: int | None, compile: bool) -> float:
    """Mean ms of a decoder pass over one image (plain steps, or window passes of ``window`` tokens a row)."""
    v = model.cfg.vocab
    prompt = torch.cat([torch.tensor([v.bos_id]), v.text_mask().nonzero().flatten()[:8]])  # eight text ids
    overrides = dict(mode="image", temperature=1.0, speculative=window is not None,
                     speculative_window=window or 2)
    config = complete_config(model, [prompt] * batch, n_codes, None, overrides)
    times = []
    for _ in range(2):  # the first compiles
        session = open_session(model, [prompt] * batch, config, tokens_per_image=n_codes, seed=0, compile=compile)
        session.step()  # the prefill is neither kind
        sync(session.cache.seqlens.device)
        t, passes = time.perf_counter(), 0
        while not session.finished and passes < 64:
            session.step()
            passes += 1
        sync(session.cache.seqlens.device)
        times.append((time.perf_counter() - t) * 1e3 / passes)
    return times[-1]


def cost_rows(name: str, model: Transformer, n_codes: int, opts) -> list[dict]:
    rows = []
    for batch in (1, 8):
        plain = pass_ms(model, n_codes, batch, None, opts.compile)
        for window in opts.windows:
            ms = pass_ms(model, n_codes, batch, window, opts.compile)
            rows.append({"setting": f"pass cost, {name}", "batch": batch, "method": f"window W={window}",
                         "plain_step_ms": round(plain, 3), "window_pass_ms": round(ms, 3),
                         "window_over_plain": round(ms / plain, 2)})
    return rows


def run(opts) -> list[dict]:
    """The checkpoint's rows, then the pass costs (a random ``preset`` model's on a GPU only)."""
    device = torch.device(opts.device)
    model = Fusion.from_pretrained(opts.checkpoint, device=device)
    rows = checkpoint_rows(model, opts)
    rows += cost_rows("checkpoint", model.model, model.tokenizer.tokens_per_image, opts)
    if device.type == "cuda":
        with device:
            random = Transformer(ModelConfig.preset(opts.preset, released_vocab())).to(torch.bfloat16).eval()
        rows += cost_rows(f"random {opts.preset}, bf16", random, 1024, opts)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, compile={opts.compile}")
    return [{c: r.get(c) for c in cols} for r in rows]
