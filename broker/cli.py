"""``brokerctl``: the operator CLI for the broker's admin API.

Exit codes: 0 ok, 1 the broker answered with an error (or what was asked for does not
exist, e.g. an unknown service or state value), 2 usage error (including a JSON argument
that is not valid JSON, a ``--tls-ca`` that is not a readable PEM certificate and a
``--token`` gRPC cannot send), 3 the broker's admin API cannot be reached.

``--json`` (before or after the verb) prints one JSON document on stdout: the admin API's
response in the proto3 JSON mapping (field names as in the ``.proto``), or, for verbs whose
response carries no information (resolving an awakeable), a small object saying what was
done. Values the SDK stores as JSON appear decoded: ``state`` verbs print them as JSON
values, and ``invocations describe`` adds ``value_json`` next to each base64 JSON value of
its journal, and ``request_json`` / ``value_json`` next to the protobuf requests, results
and outputs whose message types the broker knows. Its human output shows those as JSON
too (``--hex`` shows the bytes). Errors go to stderr as ``error: CODE: message``.

``invocations list`` and ``schedules list`` print one page (at most 1000); when more
follow, the JSON carries ``next_page_token`` and the table is followed, on stderr, by the
``--page-token`` to pass for the next page.

Keys, names and messages are whatever callers and services sent: the human output shows
their control characters escaped (``\\x1b``, ``\\n``), never raw on the terminal; the JSON
output carries them as they are, in JSON's escapes.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from durable.v1 import admin_pb2, admin_pb2_grpc, journal_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker import _cli_cluster, _cli_journal, _cli_limits, _cli_replay, config
from broker import _cli_format as fmt
from broker import _cli_schedules as sched

DEFAULT_ADMIN = "127.0.0.1:9091"
DEFAULT_TIMEOUT_S = 10.0

# gRPC's default 4 MiB receive limit is below what the broker legitimately sends: it
# accepts payloads up to --max-payload-bytes (4 MiB, and a describe or export adds the
# journal around them) and state up to --max-state-bytes (16 MiB), both configurable. The
# admin server's own send limit (64 MiB) is the cap that matters; a lower one here would
# only make data the broker accepted unreadable.
CHANNEL_OPTIONS: list[tuple[str, int]] = [("grpc.max_receive_message_length", -1)]

# The PEM header of a certificate: gRPC given anything else (a key, a DER file, a typo'd
# path to some text file) fails every handshake and reports the broker unreachable.
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

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
    # Both are checked by their argparse types, also when they come from the environment
    # (argparse converts a string default too): a bad one is a usage error up front,
    # rather than a traceback or a misleading "cannot reach the broker".
    parser.add_argument(
        "--token",
        type=_token,
        default=os.environ.get("BROKER_ADMIN_TOKEN") or None,
        help="the broker's admin token, when it requires one (default: $BROKER_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        dest="tls_ca_pem",
        type=_pem_certificates,
        default=os.environ.get("BROKER_TLS_CA") or None,
        metavar="PEM",
        help="connect with TLS, trusting this CA certificate (default: $BROKER_TLS_CA)",
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
    group_verbs: dict[str, Any] = {}
    for group, group_help in _GROUPS.items():
        group_parser = groups.add_parser(group, help=group_help)
        group_verbs[group] = group_parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for spec in _VERBS:
        sub = group_verbs[spec.group].add_parser(spec.name, help=spec.help, description=spec.help)
        # Also accepted after the verb; SUPPRESS keeps a global --json from being reset.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )
        for arg in spec.arguments:
            sub.add_argument(*arg.names, **arg.options)
        sub.set_defaults(handler=spec.handler)
    return parser


DEFAULT_REASON = "rejected"


@dataclasses.dataclass(frozen=True)
class _Arg:
    """One `add_argument` call of a verb: its names and its keyword options."""

    names: tuple[str, ...]
    options: dict[str, Any]


def _arg(*names: str, **options: Any) -> _Arg:
    return _Arg(names, options)


@dataclasses.dataclass(frozen=True)
class _Verb:
    """One ``brokerctl GROUP VERB``: its help, its handler and its arguments."""

    group: str
    name: str
    help: str
    handler: Handler
    arguments: tuple[_Arg, ...] = ()


def _json_positional(optional: bool) -> _Arg:
    if optional:
        return _arg(
            "value",
            metavar="JSON",
            nargs="?",
            type=_json_value,
            default=b"null",
            help="the value, as JSON (default: null); quote strings: '\"text\"'",
        )
    return _arg(
        "value",
        metavar="JSON",
        type=_json_value,
        help="the value, as JSON; quote strings: '\"text\"'",
    )


_PROMISE_POSITIONALS = (
    _arg("service", metavar="SERVICE", help="the workflow, e.g. playground.Signup"),
    _arg("key", metavar="KEY", help="the workflow's key"),
    _arg("name", metavar="NAME", help="the promise's name"),
)
_OBJECT_POSITIONALS = (
    _arg(
        "service", metavar="SERVICE", help="a virtual object or workflow, e.g. playground.Counter"
    ),
    _arg("key", metavar="KEY", help="the object's key"),
)
_INVOCATION_ID = _arg("invocation_id", metavar="ID", help="an invocation id (inv_...)")
_AWAKEABLE_ID = _arg("awakeable_id", metavar="ID", help="an awakeable id (awk_...)")
_REASON = _arg(
    "reason", metavar="REASON", nargs="?", default=DEFAULT_REASON, help="the error message"
)
_STATE_NAME = _arg("name", metavar="NAME", help="the state value's name")
_PAGE_TOKEN = _arg(
    "--page-token",
    default="",
    metavar="TOKEN",
    help="the page after the one that printed this token (its next_page_token); "
    "keep the other options as they were",
)


def _json_value(text: str) -> bytes:
    """An argparse type: the argument's JSON text as bytes, refused unless it is JSON."""
    try:
        fmt.parse_json(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"not valid JSON: {text!r} ({e}); quote strings, e.g. '\"text\"'"
        ) from None
    return text.strip().encode("utf-8")


def _address(text: str) -> str:
    # gRPC logs a C-level stack trace for an empty target, and dials "foo" as port 443:
    # either would end in "cannot reach the broker" instead of naming the mistake.
    return config.parse_address(text, dial=True)


def _token(text: str) -> str:
    # gRPC refuses a non-binary metadata value with anything but printable ASCII, and only
    # when the call is made (logging from C and failing with INTERNAL). The token itself
    # is a secret: the message says where the bad character is, not what the token is.
    for index, ch in enumerate(text):
        if not " " <= ch <= "~":
            raise argparse.ArgumentTypeError(
                f"the token has characters not allowed in a gRPC header (character "
                f"{index + 1} of {len(text)}); it must be printable ASCII"
            )
    return text


def _pem_certificates(path: str) -> bytes:
    """An argparse type: the contents of a PEM file holding at least one certificate."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise argparse.ArgumentTypeError(
            f"cannot read {path!r}: {e.strerror or e.__class__.__name__}"
        ) from None
    if _PEM_CERTIFICATE not in data:
        raise argparse.ArgumentTypeError(
            f"{path!r} is not a PEM certificate (no {_PEM_CERTIFICATE.decode()} line)"
        )
    return data


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # 0 removes the rate (the concurrency limit stays); NaN, infinities and negatives
    # are no rate. The broker checks the slowest rate itself.
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number: {text!r}")
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


# Defined with the formatting helpers so the verb modules can raise it too.
CommandError = fmt.CommandError


# What a verb prints with --json: an admin API message (rendered in the proto3 JSON
# mapping) or a ready-made JSON object.
JsonOutput = Message | dict[str, Any]

# A verb handler makes its admin calls and returns the --json output and the human one.
Handler = Callable[[Any, argparse.Namespace, float], tuple[JsonOutput, str]]


def _list_deployments(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.ListDeploymentsRequest()
    resp: admin_pb2.ListDeploymentsResponse = stub.ListDeployments(req, timeout=timeout)
    return resp, fmt.format_deployments(resp)


def _remove_deployment(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.RemoveDeploymentRequest(deployment_id=args.deployment_id, force=args.force)
    resp: admin_pb2.RemoveDeploymentResponse = stub.RemoveDeployment(req, timeout=timeout)
    out = fmt.message_to_json(resp)
    out["deployment_id"] = args.deployment_id
    return out, fmt.format_removed_deployment(args.deployment_id, resp.in_flight)


def _list_services(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    req = admin_pb2.ListServicesRequest()
    resp: admin_pb2.ListServicesResponse = stub.ListServices(req, timeout=timeout)
    return resp, fmt.format_services(resp)


def _describe_service(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    services: admin_pb2.ListServicesResponse = stub.ListServices(
        admin_pb2.ListServicesRequest(), timeout=timeout
    )
    svc = fmt.find_service(services, args.name)
    if svc is None:
        raise CommandError("NOT_FOUND", fmt.unknown_service_message(services, args.name))
    deployments: admin_pb2.ListDeploymentsResponse = stub.ListDeployments(
        admin_pb2.ListDeploymentsRequest(), timeout=timeout
    )
    uri = next((d.uri for d in deployments.deployments if d.id == svc.deployment_id), "")
    out = fmt.message_to_json(svc)
    out["deployment_uri"] = uri
    return out, fmt.format_service(svc, uri)


def _list_invocations(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.ListInvocationsRequest(
        service=args.service, key=args.key, limit=args.limit, page_token=args.page_token
    )
    if args.status:
        req.status, req.outcome = fmt.parse_status_filter(args.status)
    resp: admin_pb2.ListInvocationsResponse = stub.ListInvocations(req, timeout=timeout)
    return fmt.invocations_to_json(resp), fmt.format_invocations(resp)


def _describe_invocation(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.DescribeInvocationRequest(invocation_id=args.invocation_id)
    resp = _cli_journal.whole(lambda r: stub.DescribeInvocation(r, timeout=timeout), req)
    return fmt.describe_to_json(resp), fmt.format_describe(resp, hex_payloads=args.hex)


def _invocation_action(method: str, action: str) -> Handler:
    def handler(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
        req = admin_pb2.InvocationRequest(invocation_id=args.invocation_id)
        resp: admin_pb2.InvocationResponse = getattr(stub, method)(req, timeout=timeout)
        return resp, fmt.format_invocation_action(action, resp.invocation)

    return handler


_cancel_invocation = _invocation_action("CancelInvocation", "cancel")
_kill_invocation = _invocation_action("KillInvocation", "kill")
_resume_invocation = _invocation_action("ResumeInvocation", "resume")
_pause_invocation = _invocation_action("PauseInvocation", "pause")
_purge_invocation = _invocation_action("PurgeInvocation", "purge")


def _resolve_awakeable(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.ResolveAwakeableRequest(awakeable_id=args.awakeable_id, value=args.value)
    stub.ResolveAwakeable(req, timeout=timeout)
    out = {
        "awakeable_id": args.awakeable_id,
        "outcome": "resolved",
        "value": fmt.parse_json(args.value),
    }
    completion = journal_pb2.Result(value=args.value)
    return out, fmt.format_completion(f"awakeable {args.awakeable_id}", completion)


def _reject_awakeable(
    stub: Any, args: argparse.Namespace, timeout: float
) -> tuple[JsonOutput, str]:
    req = admin_pb2.RejectAwakeableRequest(awakeable_id=args.awakeable_id, reason=args.reason)
    stub.RejectAwakeable(req, timeout=timeout)
    out = {"awakeable_id": args.awakeable_id, "outcome": "rejected", "reason": args.reason}
    completion = journal_pb2.Result(failure=journal_pb2.Failure(message=args.reason))
    return out, fmt.format_completion(f"awakeable {args.awakeable_id}", completion)


def _promise_label(args: argparse.Namespace) -> str:
    return f"promise {args.name!r} of {args.service} key {args.key!r}"


def _resolve_promise(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    req = admin_pb2.CompletePromiseRequest(
        service=args.service, key=args.key, name=args.name, value=args.value
    )
    stub.CompletePromise(req, timeout=timeout)
    out = {
        "service": args.service,
        "key": args.key,
        "name": args.name,
        "outcome": "resolved",
        "value": fmt.parse_json(args.value),
    }
    completion = journal_pb2.Result(value=args.value)
    return out, fmt.format_completion(_promise_label(args), completion)


def _reject_promise(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    req = admin_pb2.CompletePromiseRequest(
        service=args.service, key=args.key, name=args.name, rejection=args.reason
    )
    stub.CompletePromise(req, timeout=timeout)
    out = {
        "service": args.service,
        "key": args.key,
        "name": args.name,
        "outcome": "rejected",
        "reason": args.reason,
    }
    completion = journal_pb2.Result(failure=journal_pb2.Failure(message=args.reason))
    return out, fmt.format_completion(_promise_label(args), completion)


def _get_state(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    req = admin_pb2.GetStateRequest(service=args.service, key=args.key)
    resp: admin_pb2.GetStateResponse = stub.GetState(req, timeout=timeout)
    if args.name is None:
        return (
            fmt.state_to_json(args.service, args.key, resp.state),
            fmt.format_state(args.service, args.key, resp.state),
        )
    if args.name not in resp.state:
        raise CommandError(
            "NOT_FOUND", f"{args.service} key {args.key!r} has no state value {args.name!r}"
        )
    data = resp.state[args.name]
    out: dict[str, Any] = {"service": args.service, "key": args.key, "name": args.name}
    try:
        out["value"] = fmt.parse_json(data)
    except ValueError:
        out["raw_value"] = base64.b64encode(data).decode("ascii")
    return out, fmt.format_state_value(data)


def _set_state(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    req = admin_pb2.SetStateRequest(
        service=args.service, key=args.key, name=args.name, value=args.value
    )
    resp: admin_pb2.SetStateResponse = stub.SetState(req, timeout=timeout)
    human = f"set {args.name!r} of {args.service} key {args.key!r} to {args.value.decode()}"
    return fmt.state_change_to_json(resp), human


def _clear_state(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[JsonOutput, str]:
    # No value: the admin API clears the state value.
    req = admin_pb2.SetStateRequest(service=args.service, key=args.key, name=args.name)
    resp: admin_pb2.SetStateResponse = stub.SetState(req, timeout=timeout)
    human = f"cleared {args.name!r} of {args.service} key {args.key!r}"
    return fmt.state_change_to_json(resp), human


# The command groups, in the order `--help` lists them.
_GROUPS = {
    "deployments": "register and list deployments",
    "services": "list and describe services",
    "invocations": "inspect and steer invocations",
    "awakeables": "complete awakeables",
    "promises": "complete workflows' durable promises",
    "state": "read and edit a virtual object's state",
    "schedules": "invoke a method on a cron expression or an interval",
    "cluster": "the processes serving the partitions",
}

# Every verb, in the order `--help` lists them within its group.
_VERBS = (
    _Verb(
        "deployments",
        "register",
        "register a service endpoint (again: refresh its services; after a removal: take "
        "back its old id, resuming the invocations still pinned to it)",
        _cli_replay.register,
        (
            _arg(
                "uri",
                help="the endpoint's address, e.g. http://127.0.0.1:9101 (also 127.0.0.1:9101 "
                "or dns:///127.0.0.1:9101: one endpoint, one deployment, shown as "
                "http://HOST:PORT)",
            ),
            _arg(
                "--check",
                action="store_true",
                help="first replay against it, without side effects, the journals of the "
                "in-flight and up to 20 recently completed invocations of each service it "
                "hosts; refuse (FAILED_PRECONDITION, nothing registered) listing every "
                "divergence: invocation, entry index, recorded and new command",
            ),
            _arg(
                "--force",
                action="store_true",
                help="replace the URI's deployment in place even though its .proto files "
                "changed while invocations pinned to it are in flight (they then replay on "
                "the new code); refused without it",
            ),
        ),
    ),
    _Verb("deployments", "list", "list registered deployments", _list_deployments),
    _Verb(
        "deployments",
        "remove",
        "remove a deployment (refused while invocations that began on it are in flight, "
        "unless --force)",
        _remove_deployment,
        (
            _arg("deployment_id", metavar="ID", help="a deployment id (dp_...)"),
            _arg(
                "--force",
                action="store_true",
                help="remove it even with invocations in flight: their attempts fail and back "
                "off until the same URI is registered again, which takes back this id and "
                "resumes them",
            ),
        ),
    ),
    _Verb("services", "list", "list the services the ingress serves", _list_services),
    _Verb(
        "services",
        "describe",
        "show a service's kind, deployment and handlers",
        _describe_service,
        (_arg("name", metavar="NAME", help="a service's full name, e.g. trips.Trips"),),
    ),
    _Verb(
        "services",
        "limit",
        "set (or --clear) a service's or handler's concurrency and start-rate limits",
        _cli_limits.set_limits,
        (
            _arg(
                "target",
                metavar="SERVICE[/METHOD]",
                type=_cli_limits.split_target,
                help="e.g. trips.Trips or trips.Trips/Reserve",
            ),
            _arg(
                "--concurrency",
                type=_non_negative_int,
                help="at most N invocations running at once (suspended ones do not count); "
                "0 for no limit; not given: the one in force stays",
            ),
            _arg(
                "--rate",
                type=_rate,
                help="at most R starts per second; 0 for no limit; not given: the one in "
                "force stays",
            ),
            _arg("--clear", action="store_true", help="remove the run-time limits"),
        ),
    ),
    _Verb(
        "services",
        "limits",
        "show the limits in force, with how many run and wait under each",
        _cli_limits.get_limits,
        (_arg("service", nargs="?", default="", metavar="SERVICE", help="only this service"),),
    ),
    _Verb(
        "invocations",
        "list",
        "list invocations, newest first",
        _list_invocations,
        (
            _arg(
                "--status",
                choices=(*fmt.STATUS_CHOICES, *fmt.OUTCOME_CHOICES),
                help="only this status; succeeded and failed are completed ones that ended so",
            ),
            _arg("--service", default="", help="only this service (e.g. trips.Trips)"),
            _arg("--key", default="", help="only this virtual object / workflow key"),
            _arg(
                "--limit",
                type=_non_negative_int,
                default=0,
                help="at most N invocations, newest first (default and most: 1000)",
            ),
            _PAGE_TOKEN,
        ),
    ),
    _Verb(
        "invocations",
        "describe",
        "show one invocation and its journal",
        _describe_invocation,
        (
            _INVOCATION_ID,
            _arg(
                "--hex",
                action="store_true",
                help="show requests, results and outputs as bytes (hex), not as JSON",
            ),
        ),
    ),
    _Verb(
        "invocations",
        "export",
        "print an invocation's journal as self-describing JSON (record, entries, the "
        "deployment's descriptors), for durable.testing.replay",
        _cli_replay.export,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "invocations",
        "cancel",
        "cancel an invocation: it sees a CANCELLED error at its next await, "
        "so its compensations run",
        _cancel_invocation,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "invocations",
        "kill",
        "stop an invocation now, without compensation",
        _kill_invocation,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "invocations",
        "pause",
        "pause an invocation: abandon its attempt, start none until it is resumed",
        _pause_invocation,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "invocations",
        "resume",
        "resume a paused invocation, or retry a backing-off one now",
        _resume_invocation,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "invocations",
        "purge",
        "delete a completed invocation now (record, journal, idempotency key; a "
        "workflow's promises and state) instead of when its retention ends",
        _purge_invocation,
        (_INVOCATION_ID,),
    ),
    _Verb(
        "awakeables",
        "resolve",
        "resolve an awakeable with a JSON value",
        _resolve_awakeable,
        (_AWAKEABLE_ID, _json_positional(optional=True)),
    ),
    _Verb(
        "awakeables",
        "reject",
        "reject an awakeable: its await raises an error",
        _reject_awakeable,
        (_AWAKEABLE_ID, _REASON),
    ),
    _Verb(
        "promises",
        "resolve",
        "resolve a workflow's durable promise",
        _resolve_promise,
        # Required (`null` for none): optional, a forgotten NAME took the value's place.
        (*_PROMISE_POSITIONALS, _json_positional(optional=False)),
    ),
    _Verb(
        "promises",
        "reject",
        "reject a workflow's durable promise",
        _reject_promise,
        (*_PROMISE_POSITIONALS, _REASON),
    ),
    _Verb(
        "state",
        "get",
        "show an object's state, or one value of it as JSON",
        _get_state,
        (
            *_OBJECT_POSITIONALS,
            _arg("name", metavar="NAME", nargs="?", help="only this state value"),
        ),
    ),
    _Verb(
        "state",
        "set",
        "set one state value to a JSON value",
        _set_state,
        (*_OBJECT_POSITIONALS, _STATE_NAME, _json_positional(optional=False)),
    ),
    _Verb(
        "state",
        "clear",
        "remove one state value",
        _clear_state,
        (*_OBJECT_POSITIONALS, _STATE_NAME),
    ),
    _Verb(
        "schedules",
        "create",
        "create a schedule: each slot invokes SERVICE/METHOD with the JSON request "
        "(idempotency key schedule:NAME:FIRE_MS)",
        sched.create,
        (
            _arg("name", metavar="NAME", help="the schedule's name"),
            _arg("target", metavar="SERVICE/METHOD", type=sched.target, help="what to invoke"),
            # Required: an optional positional would be taken as absent when options
            # come between it and SERVICE/METHOD.
            _arg(
                "request",
                metavar="JSON",
                type=_json_value,
                help="the request as JSON, e.g. '{\"amount\": 1}' ('{}' for none)",
            ),
            _arg("--cron", metavar="EXPR", help="a 5-field cron expression, e.g. '*/5 * * * *'"),
            _arg("--every", metavar="DURATION", type=sched.duration_ms, help="e.g. 30s, 5m"),
            _arg("--timezone", metavar="ZONE", help="the cron's IANA time zone (default: UTC)"),
            _arg("--key", metavar="KEY", help="the key of a virtual object or workflow"),
            _arg(
                "--overlap",
                choices=("skip", "queue-one", "allow"),
                default="skip",
                help="when the previous firing still runs: skip the slot (default), queue "
                "one slot to run after it, or allow both",
            ),
            _arg(
                "--catch-up",
                dest="catch_up",
                choices=("latest", "all"),
                default="latest",
                help="slots missed while the broker was down: fire the latest only "
                "(default) or all",
            ),
        ),
    ),
    _Verb(
        "schedules",
        "list",
        "list schedules by name",
        sched.list_,
        (
            _arg(
                "--limit",
                type=_non_negative_int,
                default=0,
                help="at most N schedules (default and most: 1000)",
            ),
            _PAGE_TOKEN,
        ),
    ),
    _Verb(
        "schedules",
        "describe",
        "show a schedule, its next fire times and its last firing",
        sched.action("DescribeSchedule", ""),
        (_arg("name", metavar="NAME"),),
    ),
    _Verb(
        "schedules",
        "pause",
        "stop firing (missed slots are not caught up)",
        sched.action("PauseSchedule", "paused"),
        (_arg("name", metavar="NAME"),),
    ),
    _Verb(
        "schedules",
        "resume",
        "fire again from the next slot",
        sched.action("ResumeSchedule", "resumed"),
        (_arg("name", metavar="NAME"),),
    ),
    _Verb(
        "schedules",
        "trigger",
        "fire once now",
        sched.action("TriggerSchedule", "triggered"),
        (_arg("name", metavar="NAME"),),
    ),
    _Verb(
        "schedules",
        "delete",
        "delete a schedule (firings already started go on)",
        sched.delete,
        (_arg("name", metavar="NAME"),),
    ),
    _Verb(
        "cluster",
        "status",
        "list the nodes (workers) and the partitions, with each partition's owner",
        _cli_cluster.status,
    ),
)


def wait_for_channel(channel: grpc.Channel, timeout: float) -> None:
    """Return once the admin API answers on ``channel``; raise ``BrokerUnreachable`` otherwise.

    One ``grpc.health.v1.Health/Check`` (open without the admin token), without
    ``wait_for_ready``: a refused connection is reported at once instead of after the
    whole timeout, while a silent (firewalled) address still fails after ``timeout``. Any
    other answer, an error included, means the broker was reached; the verb's own call
    reports that error.
    """
    # Not by watching the channel's connectivity (``channel.subscribe``): closing a channel
    # then waits for gRPC's pending connectivity poll, ~0.2 s added to every command.
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise BrokerUnreachable("timed out connecting") from None
        if code is grpc.StatusCode.UNAVAILABLE:
            raise BrokerUnreachable("connection failed") from None


def _render_json(output: JsonOutput) -> str:
    # Every field is printed, defaults included, so scripts can rely on keys being present
    # (an empty list is [] rather than a missing key).
    as_dict = output if isinstance(output, dict) else fmt.message_to_json(output)
    # Still valid JSON with the same values, but no raw DEL or C1 character for a terminal.
    return fmt.escape_json_controls(json.dumps(as_dict, indent=2, ensure_ascii=False))


def _unreachable_message(admin: str) -> str:
    return (
        f"error: cannot reach the broker's admin API at {admin} "
        "(is it running? set --admin or BROKER_ADMIN)"
    )


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization: Bearer TOKEN` to every call on a plain-text channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return continuation(details._replace(metadata=metadata), request)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca_pem:
        creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca_pem)
        if args.token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(args.token)
            )
        return grpc.secure_channel(args.admin, creds, options=CHANNEL_OPTIONS)
    channel = grpc.insecure_channel(args.admin, options=CHANNEL_OPTIONS)
    if args.token:
        return grpc.intercept_channel(channel, _TokenInterceptor(args.token))
    return channel


def run(args: argparse.Namespace) -> int:
    """Execute a parsed command against the admin API and print its output."""
    handler: Handler = args.handler
    with _channel(args) as channel:
        try:
            wait_for_channel(channel, args.timeout)
        except BrokerUnreachable:
            _print_error(_unreachable_message(args.admin))
            return EXIT_UNREACHABLE
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            response, human = handler(stub, args, args.timeout)
        except grpc.RpcError as err:
            # The RpcError a unary stub raises is also a grpc.Call carrying the status.
            code = err.code()
            details = err.details() or ""
            _print_error(f"error: {code.name}: {details}")
            return EXIT_BROKER_ERROR
        except CommandError as err:
            _print_error(f"error: {err.code}: {err.message}")
            return EXIT_BROKER_ERROR
    # The formatters escape what they show of user-supplied text; this is the net under
    # them (every verb, the schedules' and the cluster's included): no control character
    # but the line breaks of the layout reaches the terminal raw.
    print(_render_json(response) if args.json else fmt.escape_control(human, keep="\n"))
    hints = [] if args.json else [_next_page_hint(response), *_notes(response)]
    for hint in filter(None, hints):
        # On stderr: the table on stdout stays what a script parses.
        _print_error(hint)
    return EXIT_OK


def _next_page_hint(output: JsonOutput) -> str:
    """How to get the next page of a paged listing (its AIP-158 next_page_token), or
    "" when this page is the last."""
    if isinstance(output, dict):
        token = output.get("next_page_token", "")
    else:
        token = getattr(output, "next_page_token", "")
    return f"more follow: run the same command with --page-token {token}" if token else ""


_NOTES = {
    "partial": "note: completed invocations are listed and counted from the newest the "
    "broker indexes (--admin-index-rows), or not yet while it indexes them after a start; "
    "the others are retained: describe one by its id",
    "rendering_omitted": "note: payloads are shown as bytes: with their JSON the answer "
    "would pass the admin API's 64 MiB message cap",
}


def _notes(output: JsonOutput) -> list[str]:
    """What an answer says it leaves out (a listing of only the newest completed
    invocations, a journal without its payloads' JSON)."""
    return [
        note
        for field, note in _NOTES.items()
        if (output.get(field) if isinstance(output, dict) else getattr(output, field, False))
    ]


def _print_error(message: str) -> None:
    # An error message can quote what a caller sent (a key, a name); multi-line ones (a
    # check's divergences) keep their lines.
    print(fmt.escape_control(message, keep="\n"), file=sys.stderr)


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
