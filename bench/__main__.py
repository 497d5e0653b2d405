"""`python -m bench`: see `bench.run` and `--help`; with `--peer`, see `bench.peer.main`."""

import sys


def _main() -> int:
    if any(a == "--peer" or a.startswith("--peer=") for a in sys.argv[1:]):
        from bench.peer.main import main as peer_main

        return peer_main()
    from bench.run import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
