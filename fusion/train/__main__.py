"""``python -m fusion.train`` and ``torchrun --nproc_per_node N -m fusion.train ...``: ``fusion train``."""

import logging
import sys

from fusion.cli.train import main

logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.exit(main())
