"""The benchmark suites behind ``fusion bench``: each module has a frozen ``Options`` dataclass and
``run(options) -> list[dict]`` (one dict per table row). Timing suites need a CUDA GPU, but ``static`` and
``cpu`` run anywhere."""

# suite -> (module, one-line description); modules are imported only when their suite runs.
SUITES: dict[str, tuple[str, str]] = {
    "static": ("fusion.bench.static", "compile every Triton kernel for sm_80 / sm_90 without a GPU: registers, "
                                      "spills, shared memory, occupancy, MMA class (compile-only, not a speed)"),
    "attention": ("fusion.bench.attention", "attention fwd / fwd+bwd TFLOP/s: ours vs SDPA backends, flex, flash-attn"),
    "decode": ("fusion.bench.decode", "split-KV decode attention TB/s vs SDPA, next to a device copy"),
    "ops": ("fusion.bench.ops", "rmsnorm / rope / swiglu / fused linear-CE fwd+bwd ms and memory vs eager"),
    "train": ("fusion.bench.train", "training-step tokens/s and MFU for model presets"),
    "generate": ("fusion.bench.generate", "decode tokens/s and GB/s, one CFG image vs HF, batched text-to-image"),
    "vq": ("fusion.bench.vq", "VQ image tokenizer encode / decode images/s"),
    "tokenize": ("fusion.bench.tokenize", "corpus tokenization on the CPU: images/s and peak RSS for large JPEGs, "
                                          "text tokens/s"),
    "cpu": ("fusion.bench.cpu", "CPU: fusion vs HF transformers generation and training tokens/s, next to this "
                               "machine's read-bandwidth and matmul roofs"),
    "serve": ("fusion.bench.serve", "concurrent clients against fusion serve on 127.0.0.1: tokens/s, images/s, time "
                                    "to first token / image, batched vs one request at a time, RSS"),
}
