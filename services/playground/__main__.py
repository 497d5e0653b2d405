"""`python -m services.playground --listen 127.0.0.1:9110`."""

from services._common import arg_parser, serve

from .service import Busy, Counter, Flaky, Signup, Waiter


def main() -> None:
    """Serves the playground services."""
    args = arg_parser(
        "python -m services.playground",
        "Waiter, Counter, Signup, Flaky and Busy: the programming model, service by service.",
        "PLAYGROUND_LISTEN",
        "127.0.0.1:9110",
    ).parse_args()
    serve([Waiter(), Counter(), Signup(), Flaky(), Busy()], args)


if __name__ == "__main__":
    main()
