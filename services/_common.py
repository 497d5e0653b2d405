"""Command-line plumbing shared by the demo services: flags, logging, serving."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import durable


def arg_parser(
    prog: str, description: str, listen_env: str, default_listen: str
) -> argparse.ArgumentParser:
    """The flags every demo service takes: `--listen` and `--log-level`.

    Args:
        prog: The program name shown in `--help`, e.g. `python -m services.flights`.
        description: One line on what the service does.
        listen_env: The environment variable that overrides the default address.
        default_listen: The address used when neither the flag nor the variable is set.

    Returns:
        A parser that services may extend with their own flags.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--listen",
        default=os.environ.get(listen_env, default_listen),
        help=f"host:port of the service endpoint (env {listen_env}, default {default_listen})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level (default INFO)",
    )
    parser.add_argument(
        "--request-response",
        action="store_true",
        default=os.environ.get("DURABLE_REQUEST_RESPONSE", "") == "1",
        help="ask the broker to drive this endpoint with one unary call per attempt "
        "(as FaaS platforms run handlers) instead of a stream",
    )
    return parser


def serve(servicers: Sequence[durable.Servicer], args: argparse.Namespace) -> None:
    """Configures logging and serves `servicers` on `args.listen` until SIGTERM/SIGINT.

    Args:
        servicers: Instances of the generated `Servicer` subclasses to host.
        args: Parsed flags from a parser made by `arg_parser`.
    """
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    durable.serve(list(servicers), args.listen, request_response=args.request_response)
