"""Suite-wide setup. Triton reads TRITON_INTERPRET when it is first imported, and other tests' libraries may
import it before tests/kernels does, so the CPU interpreter is chosen here, before anything else."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
