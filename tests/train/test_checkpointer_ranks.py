"""torchrun with gloo on the CPU: a rank that misses one of a checkpoint's collectives fails the run within about
the collective timeout, with an error naming the rank and the phase, instead of hanging it."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .test_distributed import ROOT

WORKER = ROOT / "tests" / "train" / "checkpointer_ranks_worker.py"
LIMIT_S = 120


def torchrun_expecting_failure(args: list[str], nproc: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    """Run torchrun; a run still going after ``LIMIT_S`` is killed (its whole process group) and fails the test."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the run hung: still going after {LIMIT_S} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - start


def test_a_rank_that_skips_the_seal_barrier_fails_the_run_naming_the_rank_and_the_phase(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    run = tmp_path / "run"
    proc, took = torchrun_expecting_failure([str(WORKER), str(tmp_path / "tokenizer"), str(run), "10"])
    assert proc.returncode != 0 and took < LIMIT_S, proc.stderr[-4000:]
    # Rank 0 waits at the monitored barrier and learns who is missing ("rank 1 did not reach it"); rank 1 times
    # out at the seal's next collective. Whichever fails first, torchrun stops the other, maybe before it reports.
    errors = re.findall(r"CheckpointTimeout: (rank \d: checkpoint save of step 2 timed out in phase 'seal' \(.*? "
                        r"within --dist-timeout-s 10 s\))", proc.stderr)
    assert errors, proc.stderr[-4000:]
    assert all(e.startswith("rank 1:") or "(rank 1 did not reach it" in e for e in errors), errors
    assert not (run / "step_0000002").exists()  # the step was never sealed
