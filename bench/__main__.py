"""`python -m bench`: see `bench.run` and `--help`."""

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
