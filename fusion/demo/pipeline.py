"""The demo's stages: corpus, BPE, the ``tiny`` VQ tokenizer, the ``tiny`` decoder, then scoring and the page.

The decoder trains with condition dropout (10% of documents lose the text before their first image, as LlamaGen
drops captions), so classifier-free guidance has an unconditional model to steer away from; the guidance scale
is chosen on validation prompts and reported on separate held-out ones.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fusion.api import Fusion
from fusion.data.shards import TokenDocs
from fusion.data.synthetic import SyntheticWorld
from fusion.demo.page import write_page
from fusion.demo.scoring import Scores, score
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.train.config import TrainConfig
from fusion.train.datasets import training_datasets
from fusion.train.loop import Trainer
from fusion.train.vq.config import VQTrainConfig
from fusion.train.vq.loop import train_vq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of every stage; ``quick()`` shrinks them for the test suite."""

    out_dir: str = "demo_out"
    seed: int = 0
    documents: int = 12000      # training corpus: caption -> image, image -> caption, stories
    story_fraction: float = 0.1  # the rest splits evenly between the two caption directions, the scored tasks
    eval_prompts: int = 200     # held-out scenes per direction (the reported accuracies)
    val_prompts: int = 200      # other scenes, to choose the guidance scale on
    bpe_vocab: int = 512
    vq_steps: int = 500         # where the oracle still reads every held-out reconstruction (RESULTS.md)
    lm_steps: int = 700         # more steps cost time for no better held-out score (RESULTS.md)
    lm_batch: int = 19          # 19 x 218: about 4,096 tokens a step, as the recipe was tuned with
    seq_len: int = 218          # + 1 = 219: three 73-token caption documents fill a sequence exactly
    lm_lr: float = 3e-3
    condition_dropout: float = 0.1
    # Cut packing trains a third of the captions apart from their image; whole documents cost a little padding
    # and reach the same accuracy in less time (figures: benchmarks/RESULTS.md, "Figures moved out of code comments").
    whole_documents: bool = True
    compile: bool = True        # the blocks train compiled: faster than eager once Inductor's cache holds them
    guidance_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
    # Low: a tiny model's samples drift off the shape at temperature 1. Not 0: greedy draws one image per caption
    # (48 distinct captions), so its accuracy jumps by whole captions from one guidance scale to the next.
    image_temperature: float = 0.3
    stories: int = 4            # interleaved generations shown on the page
    single_prompts: int = 12    # captions generated one at a time to time plain vs speculative decoding at batch 1
    threads: int = 0            # torch threads; 0 = torch's default
    dtype: str = "auto"         # the decoder's training (autocast) and decoding dtype: auto | bf16 | fp32
    progress: bool = True       # tqdm bars (off when stderr is not a terminal)

    @classmethod
    def quick(cls, out_dir: str) -> DemoConfig:
        """A few minutes: small, but trained enough to draw most captions unguided, which is what a test of
        guidance needs."""
        return cls(out_dir=out_dir, documents=2000, eval_prompts=64, val_prompts=32, bpe_vocab=300, vq_steps=300,
                   lm_steps=300, stories=2, single_prompts=4)


@dataclass
class DemoReport:
    text_to_image_accuracy: float     # held-out prompts, at the guidance scale chosen on validation prompts
    image_to_caption_accuracy: float
    best_guidance_scale: float
    guidance: dict[str, dict[str, float]]  # scale -> {"validation": accuracy, "test": accuracy}
    seconds: dict[str, float]
    decoding: list[dict]  # plain vs speculative decoding of the held-out captions (scoring.compare_decoding)
    dtype: str            # the decoder's compute dtype (trained under autocast in it, decoded in it)
    heldout_ce: float     # the decoder's cross-entropy on held-out documents after training


class _Clock:
    """Seconds per stage, logged as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        self.seconds[name] = round(time.perf_counter() - self._t, 1)
        log.info("demo: %s done in %.1f s", name, self.seconds[name])
        self._t = time.perf_counter()


def _train_decoder(cfg: DemoConfig, tokenizer: MixedTokenizer, token_docs: TokenDocs,
                   out: Path) -> tuple[Transformer, str, float]:
    """The trained decoder (fp32 weights), the dtype it trained in, and its last held-out cross-entropy."""
    model = Transformer(ModelConfig.preset("tiny", tokenizer.vocab))
    train_cfg = TrainConfig.preset("tiny", steps=cfg.lm_steps, batch_size=cfg.lm_batch, seq_len=cfg.seq_len,
                                   lr=cfg.lm_lr, warmup=max(1, cfg.lm_steps // 20), seed=cfg.seed,
                                   eval_every=cfg.lm_steps, save_every=cfg.lm_steps, keep_last=1,
                                   progress=cfg.progress, condition_dropout=cfg.condition_dropout,
                                   compile=cfg.compile, whole_documents=cfg.whole_documents,
                                   dtype=cfg.dtype)
    trainer = Trainer(train_cfg, model, tokenizer, *training_datasets(train_cfg, tokenizer.vocab,
                                                                      *token_docs.split(0.05)), out / "lm")
    history = trainer.fit()
    return model.eval(), trainer.dtype, next(m["eval_ce"] for m in reversed(history) if "eval_ce" in m)


def run(cfg: DemoConfig) -> DemoReport:
    """Train every stage, generate and score both directions, write index.html, report.json and a checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world, clock = SyntheticWorld(seed=cfg.seed), _Clock()

    docs = list(world.documents(cfg.documents, story_fraction=cfg.story_fraction))
    text = TextTokenizer.train(("".join(d.texts) for d in docs), cfg.bpe_vocab)
    clock.lap("bpe")
    # held-out metrics before and after only: a pass costs time and changes nothing in training
    vq_cfg = VQTrainConfig.preset("tiny", steps=cfg.vq_steps, eval_every=cfg.vq_steps, seed=cfg.seed,
                                  progress=cfg.progress)
    image, _ = train_vq(vq_cfg, world, out / "vq")
    clock.lap("vq")
    tokenizer = MixedTokenizer(text, image.eval())
    token_docs = TokenDocs.from_arrays(tokenizer.encode_batch(docs), tokenizer.vocab.size)
    clock.lap("tokenize")
    model, dtype, heldout_ce = _train_decoder(cfg, tokenizer, token_docs, out)
    clock.lap("decoder")

    decoder = copy.deepcopy(model).to(torch.bfloat16) if dtype == "bf16" else model  # the checkpoint stays fp32
    scores: Scores = score(Fusion(decoder, tokenizer), world, cfg)
    fusion_model = Fusion(model, tokenizer)
    fusion_model.generation_config = fusion_model.generation_config.replace(
        guidance_scale=scores.best_scale, temperature=cfg.image_temperature)  # the checkpoint's defaults
    fusion_model.save_pretrained(out / "checkpoint")
    clock.lap("generate")

    report = DemoReport(scores.text_to_image[scores.best_scale]["test"], scores.image_to_caption, scores.best_scale,
                        {str(s): a for s, a in scores.text_to_image.items()}, clock.seconds, scores.decoding, dtype,
                        heldout_ce)
    write_page(out, cfg, report, scores)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
