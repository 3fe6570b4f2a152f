"""Suite-wide setup. Triton reads TRITON_INTERPRET when it is first imported, and other tests' libraries may
import it before tests/kernels does, so the CPU interpreter is chosen here, before anything else.

The CPU tuner is pinned to today's rules (fp32, no measured choices) so that numerics do not depend on the
machine, and its cache file goes to a temp folder: CI machines keep ``~/.cache`` between runs. Tests of the
tuner turn it on themselves."""

import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FUSION_TUNE"] = "off"
os.environ["FUSION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusion-test-cache-")
