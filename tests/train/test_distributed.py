"""Two gloo processes under torchrun (FSDP2) must train exactly like one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.api import Fusion
from fusion.cli.train import main
from fusion.model.transformer import Transformer

from .conftest import make_model

ROOT = Path(__file__).resolve().parents[2]


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def torchrun(args: list[str], nproc: int = 2) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "fusion.train", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_fsdp_matches_one_process_and_resumes_exactly(tokenizer, tmp_path):
    init = Fusion(make_model(tokenizer, seed=3), tokenizer).save_pretrained(tmp_path / "init")
    common = ["--checkpoint", str(init), "--synthetic", "48", "--steps", "5", "--seq-len", "48", "--grad-accum", "2",
              "--lr", "3e-3", "--warmup", "2", "--eval-every", "5", "--save-every", "2", "--keep-last", "5",
              "--eval-fraction", "0.2", "--no-progress"]
    fsdp = tmp_path / "fsdp"
    torchrun([*common, "--batch-size", "2", "--parallel", "fsdp", "--out", str(fsdp)])
    assert main([*common, "--batch-size", "4", "--out", str(tmp_path / "single")]) == 0

    two, one = metrics(fsdp), metrics(tmp_path / "single")
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3, 4, 5]
    for a, b in zip(two, one, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * b["grad_norm"]
    assert abs(two[-1]["eval_ce"] - one[-1]["eval_ce"]) < 1e-5
    assert one[-1]["loss"] < one[0]["loss"]  # it trained

    w2 = Transformer.from_pretrained(fsdp / "step_0000005").state_dict()
    w1 = Transformer.from_pretrained(tmp_path / "single" / "step_0000005").state_dict()
    w0 = Transformer.from_pretrained(init).state_dict()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
    assert any(not torch.equal(w1[k], w0[k]) for k in w1)

    # roll back to step 2: the sharded model and optimizer state come back and the curve repeats exactly
    (fsdp / "latest").write_text("step_0000002\n")
    with pytest.raises(ValueError, match="world_size: 2 -> 1"):
        main([*common, "--batch-size", "2", "--out", str(fsdp)])
    torchrun([*common, "--batch-size", "2", "--parallel", "fsdp", "--out", str(fsdp)])
    again = metrics(fsdp)
    assert [m["loss"] for m in again] == [m["loss"] for m in two]
    w2_again = Transformer.from_pretrained(fsdp / "step_0000005").state_dict()
    assert all(torch.equal(w2_again[k], w2[k]) for k in w2)
