"""`python -m bench.peer --peer restate`: see `bench.peer.main`."""

import sys

from bench.peer.main import main

if __name__ == "__main__":
    sys.exit(main())
