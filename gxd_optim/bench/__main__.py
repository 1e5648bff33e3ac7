"""``python -m gxd_optim.bench``: see `gxd_optim.bench.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
