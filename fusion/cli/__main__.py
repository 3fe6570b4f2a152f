"""``python -m fusion.cli``: the same entry point as the ``fusion`` console script."""

import sys

from fusion.cli import main

sys.exit(main())
