"""fusion vs HF transformers on the CPU, on the SAME random Chameleon model (built by HF, saved, converted).

First the machine: its CPU, the capabilities found (AVX2, AVX-512, AVX-512-BF16, AMX), whether bf16 measured
faster than fp32 (``cpu_tune.native_bf16``) and whether the tuner is on. Then, interleaved (ratios are what count
on a noisy machine): greedy generation tokens/s at each batch size and a training step's tokens/s, for fusion and
for HF in every dtype of ``--dtypes`` (default: fp32, and bf16 where the CPU has it). bf16 decodes a bf16 copy of
the model; bf16 trains fp32 weights under bf16 autocast, as fusion's trainer does. Each fusion row is set against
HF's fastest dtype for that work in this run, and next to this machine's roof measured in the same run. Decode
roof: the bytes of weights a step must read in that dtype (every matrix once, the lm_head included; only the
embedding rows used) over the read bandwidth of a large reduction. Training roof: ``flops_per_token`` (6 x params
+ attention) over the rate of a large matmul in that dtype.

Correctness first: in fp32 fusion's greedy ids must equal HF's; in bf16, teacher-forced on HF fp32's greedy text,
fusion's logits must follow HF fp32's (``numerics.Agreement``: mean KL <= 1e-4, every decisive top-1 kept), and HF
bf16 is held to the same rule beside it. Then the cost of a speculative window pass against a plain step on the
same model (image mode; random weights, so only the pass time means anything: ``fusion bench generate
--speculative`` measures acceptance on a trained model). Last, the tuner's choices for this machine. The header
is printed before the table and written to OUT/cpu_run.json.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion.bench.common import DTYPES, matmul_roof, read_roof
from fusion.bench.cpu_header import machine_header, print_machine, print_results
from fusion.files import write_json
from fusion.kernels import cpu_tune
from fusion.numerics import Agreement

DTYPE_CHOICES = ("auto", "fp32", "bf16")  # "auto": fp32, plus bf16 where cpu_tune.auto_dtype picks it
@dataclass(frozen=True)
class Options:
    """The model (38M parameters by default), the work, the dtypes and the repetitions."""

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
    dtypes: tuple[str, ...] = field(default=("auto",), metadata={
        "choices": DTYPE_CHOICES,
        "help": "dtypes timed for fusion and HF alike; auto: fp32, and bf16 where the CPU has native bf16 that "
                "measures faster (cpu_tune.auto_dtype)"})
    tune: bool = field(default=False, metadata={
        "help": "make the tuner's choices before timing: one untimed round of every work (--compile runs that "
                "round anyway; without either, choices are measured at first use, inside the first rep)"})
    roof_n: int = field(default=2048, metadata={"help": "side of the square matmul timing the training roof"})
    out: str = field(default="bench_out", metadata={"help": "folder for cpu.csv, cpu.md and cpu_run.json"})


def resolve_dtypes(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with "auto" expanded (fp32, plus bf16 where ``cpu_tune.auto_dtype`` picks it), duplicates dropped."""
    unknown = set(names) - set(DTYPE_CHOICES)
    if unknown:
        raise ValueError(f"dtypes must be among {DTYPE_CHOICES}, got {sorted(unknown)}")
    auto = ("fp32", "bf16") if "auto" in names and cpu_tune.auto_dtype("cpu") == torch.bfloat16 else ("fp32",)
    return tuple(dict.fromkeys(d for name in names for d in (auto if name == "auto" else (name,))))


def build_models(opts: Options, folder: Path):
    """A random HF Chameleon of ``opts``' shape, saved and converted: (hf model, fusion Transformer)."""
    import transformers

    from fusion.interop.hf_chameleon import convert_hf_chameleon, vocabulary_map
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


def decoders(hf, model, dtypes: tuple[str, ...]) -> dict[tuple[str, str], torch.nn.Module]:
    """The model each (implementation, dtype) decodes with: fp32 (always, the reference) as built, others cast."""
    return {(who, d): m if d == "fp32" else copy.deepcopy(m).to(DTYPES[d])
            for d in dict.fromkeys(("fp32", *dtypes)) for who, m in (("hf", hf), ("fusion", model))}


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


def train_step(which: str, model, ids: torch.Tensor, step=None, dtype: str = "fp32") -> float:
    """Tokens/s of one forward + backward (HF's loss, or fusion's fused-CE loss / its compiled step) over fp32
    weights, the forward under bf16 autocast when ``dtype`` is bf16 (as fusion's trainer does)."""
    model.train()
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss if which == "hf" else (step or model.loss)(ids[:, :-1],
                                                                                              ids[:, 1:]).loss
    loss.backward()
    tok_s = ids.numel() / (time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    model.eval()
    return tok_s


def _hf_greedy(hf, vocab, ids: torch.Tensor, n: int) -> list[int]:
    """HF's greedy text ids after ``ids`` [1, T] (told to suppress the control ids fusion's text mode masks),
    cut after eos."""
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=vocab.pad_id,
                          suppress_tokens=[vocab.pad_id, vocab.bos_id, vocab.boi_id, vocab.eoi_id])[0]
    out = out[ids.shape[1]:].tolist()
    return out[:out.index(vocab.eos_id) + 1] if vocab.eos_id in out else out


def _text_logits(who: str, model, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [T, text ids] of a teacher-forced pass over ``seq`` [1, T]: the ids text mode may emit, the same
    support for both (HF's forward floors the image codes' logits)."""
    with torch.no_grad():
        logits = model(input_ids=seq).logits if who == "hf" else model(seq)
    return logits[0][:, mask].float()


def check_parity(models: dict, dtypes: tuple[str, ...], opts: Options, generator: torch.Generator,
                 n: int = 24) -> dict[str, dict]:
    """Per dtype the gate and its figures. fp32: fusion's greedy ids equal HF's. bf16: teacher-forced on HF fp32's
    greedy text, fusion's logits follow HF fp32's (``Agreement.ok``); HF bf16 is measured by the same rule."""
    hf, model = models["hf", "fp32"], models["fusion", "fp32"]
    vocab = model.cfg.vocab
    prompt = _prompts(model, 1, opts.prompt, generator)
    want = _hf_greedy(hf, vocab, prompt, n)
    seq = torch.cat([prompt[0], torch.tensor(want, dtype=prompt.dtype)])[None]
    mask = vocab.text_mask()
    reference = _text_logits("hf", hf, seq, mask)
    out = {}
    for d in dtypes:
        if d == "fp32":
            got = fusion_generate(model, prompt, n, compile=False)[1][0].tolist()
            out[d] = {"parity": got == want, "mean_kl": None, "hf_mean_kl": None, "hf_parity": None}
            continue
        ours, theirs = (Agreement.of(reference, _text_logits(who, models[who, d], seq, mask))
                        for who in ("fusion", "hf"))
        out[d] = {"parity": ours.ok, "mean_kl": ours.mean_kl, "hf_mean_kl": theirs.mean_kl, "hf_parity": theirs.ok}
    return out


def works(opts: Options) -> list[str]:
    """The timed works, in row order."""
    return [f"generate bs{b}" for b in opts.batches] + ["train"]


def _measure(models: dict, dtypes: tuple[str, ...], opts: Options,
             generator: torch.Generator) -> dict[tuple[str, str, str], list[float]]:
    """tok/s lists per (work, implementation, dtype), measured interleaved over ``reps`` rounds. With compile or
    tune a first round is untimed: it compiles, makes the tuner's choices and warms every path, HF's too."""
    model = models["fusion", "fp32"]
    trainers = {"hf": (models["hf", "fp32"], None),
                "fusion": (model, torch.compile(model.loss) if opts.compile else None)}
    train_ids = _prompts(model, opts.train_batch, opts.train_seq + 1, generator)
    untimed = 1 if opts.compile or opts.tune else 0
    res: dict[tuple[str, str, str], list[float]] = {}
    for rnd in range(untimed + opts.reps):
        for b in opts.batches:
            ids = _prompts(model, b, opts.prompt, generator)
            for who in ("hf", "fusion"):
                for d in dtypes:
                    m = models[who, d]
                    tok_s = (hf_generate(m, ids, opts.new_tokens) if who == "hf" else
                             fusion_generate(m, ids, opts.new_tokens, opts.compile))[0]
                    if rnd >= untimed:
                        res.setdefault((f"generate bs{b}", who, d), []).append(tok_s)
        for who in ("hf", "fusion"):
            m, step = trainers[who]
            for d in dtypes:
                tok_s = train_step(who, m, train_ids, step, d)
                if rnd >= untimed:
                    res.setdefault(("train", who, d), []).append(tok_s)
    return res


def roofs(models: dict, dtypes: tuple[str, ...], opts: Options) -> tuple[dict[tuple[str, str], float], dict]:
    """Roof tok/s per (work, dtype), and the measured rates behind them (read GB/s, matmul GFLOP/s per dtype)."""
    cpu = torch.device("cpu")
    read_gbs = read_roof(cpu) * 1e3
    gflops = {d: matmul_roof(cpu, n=opts.roof_n, dtype=DTYPES[d]) * 1e3 for d in dtypes}
    model = models["fusion", "fp32"]
    out = {}
    for d in dtypes:
        for b in opts.batches:
            out[f"generate bs{b}", d] = b * read_gbs * 1e9 / step_bytes(models["fusion", d], b)
        out["train", d] = gflops[d] * 1e9 / model.flops_per_token(opts.train_seq)
    return out, {"read_GB_s": read_gbs, "matmul_GFLOP_s": gflops}


def work_rows(res: dict, roof: dict, parity: dict, dtypes: tuple[str, ...], opts: Options) -> list[dict]:
    """One row per (work, fusion dtype): fusion's tok/s, HF's in every dtype and at its best, the ratios, the roof,
    and the dtype's parity gate (``mean_kl``: fusion's logits from HF fp32's; HF's own is in the header)."""
    rows = []
    for work in works(opts):
        hf = {d: statistics.median(res[work, "hf", d]) for d in dtypes}
        best = max(hf, key=hf.__getitem__)
        fp32 = statistics.median(res[work, "fusion", "fp32"]) if "fp32" in dtypes else None
        for d in dtypes:
            ours = statistics.median(res[work, "fusion", d])
            rows.append({"work": work, "dtype": d, "fusion_tok_s": ours, **{f"hf_{h}_tok_s": hf[h] for h in dtypes},
                         "hf_best_tok_s": hf[best], "hf_best_dtype": best, "fusion_vs_hf_best": ours / hf[best],
                         "vs_fusion_fp32": ours / fp32 if fp32 and d != "fp32" else None,
                         "roof_tok_s": roof[work, d], "fusion_of_roof": ours / roof[work, d],
                         "parity": parity[d]["parity"], "mean_kl": parity[d]["mean_kl"], "note": ""})
    return rows


def window_rows(models: dict, dtypes: tuple[str, ...], opts: Options, like: dict) -> list[dict]:
    """Per dtype, window width and batch size: image tokens a second through window passes, and the pass's time
    over a plain step's (a 256-code image, so that prompt and image fit the model's context). Each first pass is
    untimed: it compiles and makes the tuner's choices for the window."""
    from fusion.bench.speculative import pass_ms

    rows, windows = [], [w for w in opts.windows if w]
    for d in dtypes if windows else ():
        for batch in opts.batches:
            plain = pass_ms(models["fusion", d], 256, batch, None, opts.compile)
            for window in windows:
                ms = pass_ms(models["fusion", d], 256, batch, window, opts.compile)
                rows.append({**dict.fromkeys(like), "work": f"window W={window} bs{batch}", "dtype": d,
                             "fusion_tok_s": window * batch / ms * 1e3,
                             "note": f"{ms:.2f} ms = {ms / plain:.2f}x a plain step"})
    return rows


def run(opts: Options) -> list[dict]:
    """Rows per (work, dtype) and per window pass; the header (machine, roofs, parity, tuner's choices) is printed
    and written to OUT/cpu_run.json."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dtypes = resolve_dtypes(opts.dtypes)
    header = machine_header(dtypes, opts.compile, opts.tune)
    print_machine(header)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        models = decoders(*build_models(opts, Path(tmp)), dtypes)
    parity = check_parity(models, dtypes, opts, generator)
    roof, rates = roofs(models, dtypes, opts)
    rows = work_rows(_measure(models, dtypes, opts, generator), roof, parity, dtypes, opts)
    rows += window_rows(models, dtypes, opts, rows[0])
    header |= {"params_M": models["fusion", "fp32"].num_params() / 1e6, **rates, "parity": parity,
               "choices": cpu_tune.choices()}
    print_results(header)
    write_json(Path(opts.out) / "cpu_run.json", header)
    return rows
