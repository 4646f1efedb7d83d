"""python -m saematch: the command line (saematch.cli)."""

import sys

from .cli import main

sys.exit(main())
