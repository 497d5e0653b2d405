"""`python -m services.chaos --listen 127.0.0.1:9120`."""

from services._common import arg_parser, serve

from .service import Counters


def main() -> None:
    """Serves `chaos.Counters`."""
    args = arg_parser(
        "python -m services.chaos",
        "chaos.Counters: interprets the verification runner's random programs.",
        "CHAOS_LISTEN",
        "127.0.0.1:9120",
    ).parse_args()
    serve([Counters()], args)


if __name__ == "__main__":
    main()
