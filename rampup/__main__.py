"""`python -m rampup`: the `rampup` command."""

import sys

from rampup.cli import main

if __name__ == "__main__":
    sys.exit(main())
