"""``python -m fused_optim``: the ``fused-optim`` command (see fused_optim/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
