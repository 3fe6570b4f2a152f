"""fusion vs HF transformers on the CPU, on the SAME random Chameleon model (built by HF, saved, converted).

One run measures, interleaved (ratios are what count on a noisy machine): greedy generation tokens/s at each
batch size and a training step's tokens/s, each next to this machine's roof measured in the same run. Decode
roof: the bytes of weights a step must read (every matrix once, the lm_head included; only the embedding rows
used) over the read bandwidth of a large reduction. Training roof: ``flops_per_token`` (6 x params +
attention) over the rate of a large fp32 matmul. Correctness first: fusion's greedy ids must equal HF's. Last, the
cost of a speculative window pass against a plain step on the same model (image mode; random weights, so only
the pass time means anything: ``fusion bench generate --speculative`` measures acceptance on a trained model).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion.bench.common import matmul_roof, read_roof


@dataclass(frozen=True)
class Options:
    """The model (38M parameters by default), the work, and the repetitions."""

    hidden: int = field(default=512, metadata={"help": "model width"})
    layers: int = field(default=8, metadata={"help": "decoder layers"})
    heads: int = field(default=8, metadata={"help": "attention heads"})
    text_tokens: int = field(default=4096, metadata={"help": "text ids beside Chameleon's 8192 image codes"})
    prompt: int = field(default=32, metadata={"help": "prompt tokens"})
    new_tokens: int = field(default=128, metadata={"help": "greedy tokens generated per row"})
    batches: tuple[int, ...] = field(default=(1, 8), metadata={"help": "generation batch sizes"})
    train_batch: int = field(default=8, metadata={"help": "training sequences per step"})
    train_seq: int = field(default=256, metadata={"help": "training sequence length"})
    reps: int = field(default=3, metadata={"help": "interleaved repetitions (the median is reported)"})
    compile: bool = field(default=True, metadata={"help": "fusion decodes and trains with torch.compile"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    windows: tuple[int, ...] = field(default=(16,), metadata={"help": "speculative window widths timed against a "
                                                                      "plain step (0: none)"})


def build_models(opts: Options, folder: Path):
    """A random HF Chameleon of ``opts``' shape, saved and converted: (hf model, fusion Transformer)."""
    import transformers

    from fusion.model.hf_chameleon import convert_hf_chameleon, vocabulary_map
    from fusion.model.transformer import Transformer

    size = 8192 + opts.text_tokens
    vmap = vocabulary_map(size=size)
    cfg = transformers.ChameleonConfig(
        vocab_size=size, hidden_size=opts.hidden, intermediate_size=int(opts.hidden * 2.75),
        num_hidden_layers=opts.layers, num_attention_heads=opts.heads, num_key_value_heads=opts.heads,
        max_position_embeddings=1024, vocabulary_map=vmap, pad_token_id=vmap["<pad>"], bos_token_id=vmap["<s>"],
        eos_token_id=vmap["</s>"])
    torch.manual_seed(0)
    hf = transformers.ChameleonForConditionalGeneration(cfg).eval()
    hf.save_pretrained(folder / "hf")
    return hf, Transformer.from_pretrained(convert_hf_chameleon(folder / "hf", folder / "fusion")).float().eval()


def step_bytes(model, batch: int) -> int:
    """Weight bytes one decode step reads: every matrix once (lm_head included), the embedding rows used."""
    embed = model.embed.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    rows = batch * embed.shape[1] * embed.element_size()
    return total + rows + (embed.numel() * embed.element_size() if model.cfg.tie_embeddings else 0)


def _prompts(model, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    v = model.cfg.vocab
    first_text = v.image_start + v.image_count  # text ids after the image codes: any of them is a valid prompt
    return torch.randint(first_text + 8, v.size, (batch, length), generator=generator)


def hf_generate(hf, ids: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=hf.config.pad_token_id)
    return ids.shape[0] * n / (time.perf_counter() - t), out[:, ids.shape[1]:]


def fusion_generate(model, ids: torch.Tensor, n: int, compile: bool) -> tuple[float, list[torch.Tensor]]:
    from fusion.inference.generate import generate_ids

    t = time.perf_counter()
    out = generate_ids(model, list(ids), max_new_tokens=n, tokens_per_image=1024, mode="text", do_sample=False,
                       compile=compile)
    return sum(len(o) for o in out) / (time.perf_counter() - t), out


def train_step(which: str, model, ids: torch.Tensor, step=None) -> float:
    """Tokens/s of one fp32 forward + backward (HF's loss, or fusion's fused-CE loss / its compiled step)."""
    model.train()
    t = time.perf_counter()
    if which == "hf":
        model(input_ids=ids, labels=ids).loss.backward()
    else:
        (step or model.loss)(ids[:, :-1], ids[:, 1:]).loss.backward()
    tok_s = ids.numel() / (time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    model.eval()
    return tok_s


def _check_greedy_parity(hf, model, opts: Options, generator: torch.Generator, n: int = 24) -> bool:
    """fusion's greedy text ids equal HF's (HF told to suppress the control ids fusion's text mode masks)."""
    v = model.cfg.vocab
    ids = _prompts(model, 1, opts.prompt, generator)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           pad_token_id=v.pad_id, suppress_tokens=[v.pad_id, v.bos_id, v.boi_id, v.eoi_id])[0]
    want = want[ids.shape[1]:].tolist()
    want = want[:want.index(v.eos_id) + 1] if v.eos_id in want else want
    _, got = fusion_generate(model, ids, n, compile=False)
    return got[0].tolist() == want


def _measure(hf, model, opts: Options, generator: torch.Generator) -> dict[str, list[float]]:
    """tok/s lists per (work, implementation), measured interleaved over ``reps`` rounds."""
    compiled_loss = torch.compile(model.loss) if opts.compile else None
    res: dict[str, list[float]] = {}
    train_ids = _prompts(model, opts.train_batch, opts.train_seq + 1, generator)
    if opts.compile:  # compilation is paid once, outside the timings
        for b in opts.batches:
            fusion_generate(model, _prompts(model, b, opts.prompt, generator), opts.new_tokens, True)
        train_step("fusion", model, train_ids, compiled_loss)
    for _ in range(opts.reps):
        for b in opts.batches:
            ids = _prompts(model, b, opts.prompt, generator)
            res.setdefault(f"generate bs{b}:hf", []).append(hf_generate(hf, ids, opts.new_tokens)[0])
            res.setdefault(f"generate bs{b}:fusion", []).append(
                fusion_generate(model, ids, opts.new_tokens, opts.compile)[0])
        res.setdefault("train:hf", []).append(train_step("hf", hf, train_ids))
        res.setdefault("train:fusion", []).append(train_step("fusion", model, train_ids, compiled_loss))
    return res


def run(opts: Options) -> list[dict]:
    """One row per work: HF and fusion tokens/s, their ratio, the roof and fusion's fraction of it."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        hf, model = build_models(opts, Path(tmp))
    parity = _check_greedy_parity(hf, model, opts, generator)
    read_gbs = read_roof(torch.device("cpu")) * 1e3
    matmul = matmul_roof(torch.device("cpu"), n=2048, dtype=torch.float32) * 1e12
    res = _measure(hf, model, opts, generator)
    roofs = {f"generate bs{b}": b * read_gbs * 1e9 / step_bytes(model, b) for b in opts.batches}
    roofs["train"] = matmul / model.flops_per_token(opts.train_seq)
    rows = []
    for work, roof in roofs.items():
        hf_tok, ours = (statistics.median(res[f"{work}:{who}"]) for who in ("hf", "fusion"))
        rows.append({"work": work, "hf_tok_s": hf_tok, "fusion_tok_s": ours, "fusion_vs_hf": ours / hf_tok,
                     "roof_tok_s": roof, "fusion_of_roof": ours / roof, "greedy_ids_equal_hf": parity,
                     "threads": torch.get_num_threads(), "read_GB_s": read_gbs, "matmul_GFLOP_s": matmul / 1e9,
                     "compile": opts.compile, "params_M": model.num_params() / 1e6, "note": ""})
    return rows + window_rows(model, opts, rows[0])


def window_rows(model, opts: Options, like: dict) -> list[dict]:
    """Per window width and batch size: image tokens a second through window passes, and the pass's time over
    a plain step's (a 256-code image, so that prompt and image fit the model's context)."""
    from fusion.bench.speculative import pass_ms

    rows = []
    for batch in opts.batches:
        plain = pass_ms(model, 256, batch, None, opts.compile)
        for window in filter(None, opts.windows):
            ms = pass_ms(model, 256, batch, window, opts.compile)
            rows.append({**{k: None for k in like}, "work": f"image window W={window} bs{batch}",
                         "fusion_tok_s": window * batch / ms * 1e3, "threads": torch.get_num_threads(),
                         "compile": opts.compile, "params_M": like["params_M"],
                         "note": f"window pass {ms:.2f} ms = {ms / plain:.2f}x a plain step ({plain:.2f} ms)"})
    return rows
