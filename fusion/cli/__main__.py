"""``python -m fusion.cli``: the ``fusion`` command."""

import sys

from fusion.cli import main

sys.exit(main())
