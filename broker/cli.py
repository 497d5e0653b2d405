"""``brokerctl``: the operator CLI for the broker's admin API.

Exit codes: 0 ok, 1 the broker answered with an error, 2 usage error, 3 the broker's
admin API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import grpc
from durable.v1 import admin_pb2, admin_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from broker import _cli_format as fmt

DEFAULT_ADMIN = "127.0.0.1:9091"
DEFAULT_TIMEOUT_S = 10.0

EXIT_OK = 0
EXIT_BROKER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class BrokerUnreachable(Exception):
    """The admin API could not be connected to within the timeout."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``brokerctl`` verb."""
    parser = argparse.ArgumentParser(
        prog="brokerctl", description="Operate the durable invocation broker."
    )
    parser.add_argument(
        "--admin",
        type=_address,
        default=os.environ.get("BROKER_ADMIN") or DEFAULT_ADMIN,
        metavar="HOST:PORT",
        help="the broker's admin API address (default: $BROKER_ADMIN or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="deadline for connecting and for each call (default: %(default)s)",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    deployments = groups.add_parser("deployments", help="register and list deployments")
    dep_verbs = deployments.add_subparsers(dest="verb", required=True, metavar="VERB")
    register = dep_verbs.add_parser("register", help="register a service endpoint")
    register.add_argument("uri", help="the endpoint's address, e.g. http://127.0.0.1:9101")
    register.set_defaults(handler=_register_deployment)
    dep_verbs.add_parser("list", help="list registered deployments").set_defaults(
        handler=_list_deployments
    )

    services = groups.add_parser("services", help="list services")
    svc_verbs = services.add_subparsers(dest="verb", required=True, metavar="VERB")
    svc_verbs.add_parser("list", help="list the services the ingress serves").set_defaults(
        handler=_list_services
    )

    invocations = groups.add_parser("invocations", help="inspect invocations")
    inv_verbs = invocations.add_subparsers(dest="verb", required=True, metavar="VERB")
    inv_list = inv_verbs.add_parser("list", help="list invocations, newest first")
    inv_list.add_argument("--status", choices=fmt.STATUS_CHOICES, help="only this status")
    inv_list.add_argument("--service", default="", help="only this service (e.g. trips.Trips)")
    inv_list.add_argument("--key", default="", help="only this virtual object / workflow key")
    inv_list.add_argument(
        "--limit", type=_non_negative_int, default=0, help="at most N invocations (0: no limit)"
    )
    inv_list.set_defaults(handler=_list_invocations)
    describe = inv_verbs.add_parser("describe", help="show one invocation and its journal")
    describe.add_argument("invocation_id", metavar="ID", help="an invocation id (inv_...)")
    describe.set_defaults(handler=_describe_invocation)
    return parser


def _address(text: str) -> str:
    # gRPC logs a C-level stack trace for an empty target; refuse it as a usage error first.
    if not text.strip():
        raise argparse.ArgumentTypeError("must be HOST:PORT, not empty")
    return text.strip()


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    # The request field is uint32; reject what would not fit rather than wrap or crash.
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return value


# A verb handler makes one admin call and returns the response plus its human rendering.
Handler = Callable[[Any, argparse.Namespace, float], tuple[Message, str]]


def _register_deployment(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[Message, str]:
    req = admin_pb2.RegisterDeploymentRequest(uri=args.uri)
    resp: admin_pb2.Deployment = stub.RegisterDeployment(req, timeout=timeout)
    return resp, fmt.format_deployment(resp)


def _list_deployments(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Message, str]:
    req = admin_pb2.ListDeploymentsRequest()
    resp: admin_pb2.ListDeploymentsResponse = stub.ListDeployments(req, timeout=timeout)
    return resp, fmt.format_deployments(resp)


def _list_services(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Message, str]:
    req = admin_pb2.ListServicesRequest()
    resp: admin_pb2.ListServicesResponse = stub.ListServices(req, timeout=timeout)
    return resp, fmt.format_services(resp)


def _list_invocations(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Message, str]:
    req = admin_pb2.ListInvocationsRequest(service=args.service, key=args.key, limit=args.limit)
    if args.status:
        req.status = fmt.parse_status(args.status)  # type: ignore[assignment]
    resp: admin_pb2.ListInvocationsResponse = stub.ListInvocations(req, timeout=timeout)
    return resp, fmt.format_invocations(resp)


def _describe_invocation(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[Message, str]:
    req = admin_pb2.DescribeInvocationRequest(invocation_id=args.invocation_id)
    resp: admin_pb2.DescribeInvocationResponse = stub.DescribeInvocation(req, timeout=timeout)
    return resp, fmt.format_describe(resp)


def wait_for_channel(channel: grpc.Channel, timeout: float) -> None:
    """Block until ``channel`` is connected; raise ``BrokerUnreachable`` otherwise.

    Unlike ``grpc.channel_ready_future``, this gives up at the first TRANSIENT_FAILURE:
    a refused connection is reported at once instead of after the whole timeout, while a
    silent (firewalled) address still fails after ``timeout``.
    """
    settled = threading.Event()
    outcome: list[grpc.ChannelConnectivity] = []

    def on_change(state: grpc.ChannelConnectivity) -> None:
        if (
            state
            in (
                grpc.ChannelConnectivity.READY,
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN,
            )
            and not settled.is_set()
        ):
            outcome.append(state)
            settled.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        if not settled.wait(timeout):
            raise BrokerUnreachable("timed out connecting")
        if outcome[0] is not grpc.ChannelConnectivity.READY:
            raise BrokerUnreachable("connection failed")
    finally:
        channel.unsubscribe(on_change)


def _render_json(message: Message) -> str:
    # Every field is printed, defaults included, so scripts can rely on keys being present
    # (an empty list is [] rather than a missing key).
    as_dict = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(as_dict, indent=2)


def _unreachable_message(admin: str) -> str:
    return (
        f"error: cannot reach the broker's admin API at {admin} "
        "(is it running? set --admin or BROKER_ADMIN)"
    )


def run(args: argparse.Namespace) -> int:
    """Execute a parsed command against the admin API and print its output."""
    handler: Handler = args.handler
    with grpc.insecure_channel(args.admin) as channel:
        try:
            wait_for_channel(channel, args.timeout)
        except BrokerUnreachable:
            print(_unreachable_message(args.admin), file=sys.stderr)
            return EXIT_UNREACHABLE
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            response, human = handler(stub, args, args.timeout)
        except grpc.RpcError as err:
            # The RpcError a unary stub raises is also a grpc.Call carrying the status.
            code = err.code()
            details = err.details() or ""
            print(f"error: {code.name}: {details}", file=sys.stderr)
            return EXIT_BROKER_ERROR
    print(_render_json(response) if args.json else human)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brokerctl`` console script; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help (0) and on usage errors (2); return the code instead so
        # main() stays callable from tests and the console-script wrapper exits with it.
        return _exit_code(exit_)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `brokerctl ... | head`: the reader left; that is not an error worth a traceback.
        _silence_stdout()
        return EXIT_OK


def _exit_code(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


def _silence_stdout() -> None:
    # Point stdout at /dev/null so the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
