"""torchrun with gloo on the CPU: FSDP2 and DDP train like one process on the same global batch, checkpoints
reshard (saved by 2 processes, resumed by 1 and by 3), and every structural variant saves and resumes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.api import Fusion
from fusion.cli.train import main
from fusion.data.synthetic import SyntheticWorld
from fusion.document import write_jsonl

from .conftest import make_tied_model
from .dist_worker import VARIANTS, make_run, token_docs

ROOT = Path(__file__).resolve().parents[1].parent
WORKER = Path(__file__).with_name("dist_worker.py")


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def assert_same_curve(got: list[dict], want: list[dict], tol: float = 1e-4) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want, strict=True):
        assert abs(a["loss"] - b["loss"]) < tol and abs(a["grad_norm"] - b["grad_norm"]) < tol * b["grad_norm"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return Fusion.from_pretrained(folder, device="cpu").model.state_dict()


def test_tied_tiny_fsdp_on_two_processes_resumes_on_one_and_on_three(tokenizer, tmp_path):
    init = Fusion(make_tied_model(tokenizer, seed=3), tokenizer).save_pretrained(tmp_path / "init")
    corpus = tmp_path / "docs.jsonl"
    write_jsonl(corpus, SyntheticWorld(seed=0).documents(48))
    common = [str(corpus), "--checkpoint", str(init), "--steps", "6", "--seq-len", "48", "--batch-size", "6",
              "--grad-accum", "2", "--lr", "3e-3", "--warmup", "2", "--eval-every", "3", "--save-every", "2",
              "--keep-last", "5", "--eval-fraction", "0.2", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one)]) == 0
    # rank 0 tokenizes for longer than the collective timeout while rank 1 waits: the run must not notice
    torchrun([str(WORKER), "slow-tokenize", "12", *common, "--dist-timeout-s", "10", "--out", str(two)])
    ref = metrics(one)
    assert_same_curve(metrics(two), ref, tol=1e-5)
    assert abs(metrics(two)[-1]["eval_ce"] - ref[-1]["eval_ce"]) < 1e-5 and ref[-1]["loss"] < ref[0]["loss"]
    w1, w2 = weights(one), weights(two)
    assert all(torch.allclose(w2[k], w1[k], rtol=0, atol=1e-5) for k in w1)
    assert w2["lm_head.weight"].data_ptr() == w2["embed.weight"].data_ptr()  # still tied after 2-rank FSDP

    # killed after step 4 -> resumed by 3 processes; killed after step 2 -> resumed by 1
    for resumed, keep, nproc in ((tmp_path / "three", 4, 3), (tmp_path / "single", 2, 1)):
        shutil.copytree(two, resumed)
        for folder in resumed.glob("step_*"):
            if int(folder.name[5:]) > keep:
                shutil.rmtree(folder)
        if nproc > 1:
            torchrun(["-m", "fusion.train", *common, "--out", str(resumed)], nproc=nproc)
        else:
            assert main([*common, "--out", str(resumed)]) == 0
        assert_same_curve(metrics(resumed), ref)
        w = weights(resumed)
        assert all(torch.allclose(w[k], w1[k], rtol=0, atol=1e-4) for k in w1)


@pytest.fixture(scope="module")
def variant_runs(tokenizer, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("variants")
    tokenizer.save_pretrained(root / "tokenizer")
    torchrun([str(WORKER), "variants", str(root / "tokenizer"), str(root / "runs")])
    return root / "runs", json.loads((root / "runs" / "results.json").read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_structural_variant_trains_saves_and_resumes_under_fsdp_and_ddp(tokenizer, variant_runs, variant,
                                                                                tmp_path):
    runs, results = variant_runs
    ref = [m["loss"] for m in make_run(tokenizer, token_docs(tokenizer), tmp_path, variant).fit()]
    assert ref[-1] < ref[0]
    for parallel in ("fsdp", "ddp"):
        got = results[f"{parallel}-{variant}"]
        assert got["first"] == pytest.approx(ref, abs=1e-5), parallel  # 2 ranks == 1 process
        assert got["again"] == got["first"][2:], parallel  # killed after step 2, resumed on 2 ranks: exactly


def test_fsdp_checkpoints_resume_under_ddp_and_on_one_process_and_dropout_resumes_exactly(tokenizer, variant_runs,
                                                                                          tmp_path):
    runs, results = variant_runs
    assert results["fsdp-then-ddp"]["again"] == pytest.approx(results["fsdp-tied-gqa-swin"]["first"][2:], abs=1e-5)
    drop = results["dropout"]
    assert drop["again"] == drop["first"][2:]  # dropout keyed by step and sample, not by rank or history
    resumed = tmp_path / "run"  # the 2-rank DDP run, killed after step 2, resumed by this process
    shutil.copytree(runs / "ddp-untied-mha-pre", resumed)
    shutil.rmtree(resumed / "step_0000004")
    again = make_run(tokenizer, token_docs(tokenizer), resumed, "untied-mha-pre", seed=1).fit()
    assert [m["loss"] for m in again] == pytest.approx(results["ddp-untied-mha-pre"]["first"][2:], abs=1e-4)
