"""``python -m splitnet``: the same command line as ``splitnet``."""

import sys

from .cli import main

sys.exit(main())
