"""Generation throughput: decode tokens/s and GB/s, one CFG image vs HF, batched text-to-image; with
``--speculative``, speculative decoding of images against plain decoding instead (``fusion/bench/speculative.py``).

    fusion bench generate [--preset 1b] [--compile]
    fusion bench generate --speculative --device cpu --compile [--checkpoint demo_out/checkpoint]

Rows (random weights; correctness first: the greedy ids of our cached decode must equal a full recompute):
- decode, batch 1, ``--preset`` shapes: tokens/s and achieved GB/s = (weight bytes + KV-cache bytes read per
  token) / time per token, next to the same run's device-to-device copy bandwidth (the roof).
- one image (1024 codes, CFG): wall time, ours vs HF transformers ``generate`` on the same converted random
  Chameleon model (HF runs the image tokens with its own logits processors; both produce 1024 + 2 tokens).
- batched text-to-image at batch 16 with CFG: images/s.
``--device cpu --skip-hf`` runs the decode row on a CPU (a smoke test, not a number).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion.bench.common import copy_roof, ready, sync
from fusion.inference.generate import generate_ids
from fusion.interop.hf_chameleon import released_vocab
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer


@dataclass(frozen=True)
class Options:
    """Generation throughput options."""

    preset: str = field(default="1b", metadata={"help": "ModelConfig preset for the decode row"})
    prompt_len: int = field(default=32, metadata={"help": "prompt tokens"})
    decode_tokens: int = field(default=256, metadata={"help": "new tokens of the decode row"})
    image_batch: int = field(default=16, metadata={"help": "rows of the batched text-to-image row"})
    compile: bool = field(default=False, metadata={"help": "torch.compile(mode='reduce-overhead') the decode step"})
    skip_hf: bool = field(default=False, metadata={"help": "skip the HF comparison and image rows"})
    workdir: str = field(default="/tmp/fusion_bench_generate", metadata={"help": "scratch folder for the HF model"})
    device: str = field(default="cuda", metadata={"help": "cuda to time; cpu for a smoke run of the decode row "
                                                          "(with --speculative: real CPU timings)"})
    speculative: bool = field(default=False, metadata={"help": "plain vs speculative image decoding on a trained "
                                                                "checkpoint, and the cost of a window pass"})
    checkpoint: str = field(default="demo_out/checkpoint", metadata={"help": "with --speculative: the checkpoint"})
    prompts: int = field(default=24, metadata={"help": "with --speculative: held-out captions per setting"})
    windows: tuple[int, ...] = field(default=(16,), metadata={"help": "with --speculative: window widths to try"})


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def check_cached_equals_recompute(model, prompt: torch.Tensor, n: int = 8) -> None:
    got = generate_ids(model, [prompt], max_new_tokens=n, tokens_per_image=1024, mode="text", temperature=0.0)[0]
    seq = prompt.to(model.lm_head.weight.device)
    mask = model.cfg.vocab.text_mask(seq.device)
    with torch.no_grad():
        for t in got.tolist():
            want = model(seq[None])[0, -1].masked_fill(~mask, float("-inf")).argmax().item()
            if want != t:
                raise AssertionError("cached greedy decode differs from a full recompute; not timing it")
            seq = torch.cat([seq, torch.tensor([t], device=seq.device)])


def bench_decode(model, vocab, args: Options, roof: float, device: torch.device) -> dict:
    prompt = torch.randint(8200, vocab.size, (args.prompt_len,))
    check_cached_equals_recompute(model, prompt)
    n = args.decode_tokens
    kw = dict(max_new_tokens=n, tokens_per_image=1024, mode="text", temperature=0.0, compile=args.compile)
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([vocab.eos_id],
                                                                                           device=o.device),
                                                                          float("-inf")))
    generate_ids(model, [prompt], **{**kw, "max_new_tokens": 16})  # warm up / compile
    dt = timed(lambda: generate_ids(model, [prompt], **kw), device)
    hook.remove()
    cfg = model.cfg
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.embed.weight.numel() * model.embed.weight.element_size()  # a row per token, not all
    cache_len = args.prompt_len + n / 2  # mean length read per step
    cache_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * cache_len * 2
    gbs = (weight_bytes + cache_bytes) * n / dt / 1e9
    return dict(bench="decode bs=1", shape=f"{args.preset} prompt={args.prompt_len} new={n}",
                ours=f"{n / dt:.1f} tok/s", achieved_GBps=round(gbs, 1), roof_GBps=round(roof, 1),
                hf="", note=f"{gbs / roof:.1%} of copy roof")


def hf_chameleon(cfg: ModelConfig, directory: Path, device: torch.device):
    """A random HF Chameleon model of ``cfg``'s shapes, saved and converted to a fusion folder."""
    import transformers

    from fusion.interop.hf_chameleon import RELEASED, convert_hf_chameleon, vocabulary_map

    v = cfg.vocab
    hf_cfg = transformers.ChameleonConfig(
        vocab_size=RELEASED["size"], hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=4096,
        vocabulary_map=vocabulary_map(), pad_token_id=v.pad_id, bos_token_id=v.bos_id, eos_token_id=v.eos_id)
    torch.manual_seed(0)
    hf = transformers.ChameleonForConditionalGeneration(hf_cfg).eval()
    hf.save_pretrained(directory / "hf")
    ours = convert_hf_chameleon(directory / "hf", directory / "fusion")
    return hf.to(device, torch.bfloat16), Transformer.from_pretrained(ours, device=device, dtype=torch.bfloat16)


def bench_image(hf, ours, args: Options, device: torch.device) -> list[dict]:
    """One CFG image (1024 codes) ours vs HF, then batch-16 text-to-image with CFG."""
    import transformers

    v = ours.cfg.vocab
    prompt = torch.cat([torch.tensor([v.bos_id]), torch.randint(8200, v.size, (args.prompt_len - 1,))])
    kw = dict(max_new_tokens=1025, tokens_per_image=1024, mode="image", guidance_scale=3.0, guidance_form="logits",
              temperature=1.0, top_k=0, compile=args.compile, speculative=False)
    generate_ids(ours, [prompt], **kw)  # warm up / compile
    ours_s = timed(lambda: generate_ids(ours, [prompt], **kw), device)

    # HF: cond + uncond rows in one batch, the same guidance formula, image ids only, exactly 1024 + eoi.
    class CFG(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            c, u = scores.chunk(2)
            mixed = u + 3.0 * (c - u)
            allowed = torch.zeros_like(mixed, dtype=torch.bool)
            allowed[:, v.image_start:v.image_start + v.image_count] = input_ids.shape[1] < hf_len + 1024
            allowed[:, v.eoi_id] = input_ids.shape[1] >= hf_len + 1024
            return mixed.masked_fill(~allowed, float("-inf")).repeat(2, 1)

    cond = torch.cat([prompt, torch.tensor([v.boi_id])])
    uncond = torch.cat([torch.full((len(cond) - 2,), v.pad_id), torch.tensor([v.bos_id, v.boi_id])])
    ids = torch.stack([cond, uncond]).to(device)
    attn = torch.stack([torch.ones(len(cond)), torch.cat([torch.zeros(len(cond) - 2), torch.ones(2)])])
    attn = attn.long().to(device)
    hf_len = ids.shape[1]
    # HF forbids image ids in its forward; lift that so it can write an image the same way we do.
    hf_kw = dict(attention_mask=attn, max_new_tokens=1025, min_new_tokens=1025, do_sample=True, top_k=0,
                 logits_processor=[CFG()], pad_token_id=v.pad_id)
    with torch.no_grad(), _hf_allows_image_tokens(hf):
        hf.generate(ids, **{**hf_kw, "max_new_tokens": 16, "min_new_tokens": 16})
        hf_s = timed(lambda: hf.generate(ids, **hf_kw), device)
    rows = [dict(bench="1 image, CFG 3", shape=f"1024 codes prompt={args.prompt_len}", ours=f"{ours_s:.2f} s",
                 achieved_GBps="", roof_GBps="", hf=f"{hf_s:.2f} s", note=f"{hf_s / ours_s:.1f}x faster than HF")]

    B = args.image_batch
    prompts = [torch.cat([torch.tensor([v.bos_id]), torch.randint(8200, v.size, (args.prompt_len - 1 - b % 5,))])
               for b in range(B)]
    generate_ids(ours, prompts[:2], **{**kw, "max_new_tokens": 1025})  # warm up the batch shapes
    dt = timed(lambda: generate_ids(ours, prompts, **kw), device)
    rows.append(dict(bench=f"text-to-image bs={B}, CFG 3", shape="1024 codes, ragged prompts",
                     ours=f"{B / dt:.3f} images/s", achieved_GBps="", roof_GBps="", hf="",
                     note=f"{B * 1025 / dt:.0f} tok/s"))
    return rows


class _hf_allows_image_tokens:
    """Temporarily stop HF Chameleon from setting image-id logits to -inf in forward (for image generation)."""

    def __init__(self, hf) -> None:
        self.mapping = hf.model.vocabulary_mapping

    def __enter__(self):
        self.saved = type(self.mapping).image_tokens
        type(self.mapping).image_tokens = property(lambda self: [])
        return self

    def __exit__(self, *exc):
        type(self.mapping).image_tokens = self.saved


def run(opts: Options) -> list[dict]:
    """The decode row, then (unless ``skip_hf``) the one-image-vs-HF and batched text-to-image rows."""
    if not ready("generate", opts.device):
        return []
    if opts.speculative:
        from fusion.bench.speculative import run as speculative_rows
        return speculative_rows(opts)
    device = torch.device(opts.device)
    torch.manual_seed(0)
    vocab = released_vocab()
    cfg = ModelConfig.preset(opts.preset, vocab)
    with device:
        model = Transformer(cfg).to(torch.bfloat16).eval()
    roof = copy_roof(device) * 1e3 if device.type == "cuda" else float("nan")  # GB/s
    rows = [bench_decode(model, vocab, opts, roof, device)]
    del model
    if not opts.skip_hf:
        hf, ours = hf_chameleon(cfg, Path(opts.workdir), device)
        rows += bench_image(hf, ours, opts, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, compile={opts.compile}")
    return rows
