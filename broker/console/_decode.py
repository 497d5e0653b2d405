"""Payloads as JSON text: protobuf messages through the registered descriptors (the
deployment an invocation runs on first), JSON bytes written by the SDK as they are,
anything else as hex."""

from __future__ import annotations

import json

from durable.v1 import journal_pb2
from google.protobuf.message import DecodeError, Message

from ..registry import Registry
from ..rendering import to_dict

_CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
CODE_NUMBERS = {name: number for number, name in _CODES.items()}
_SHOWN = 4000  # characters of one payload shown on a page


def code_name(code: int) -> str:
    """`INVALID_ARGUMENT` for 3."""
    return _CODES.get(code, str(code))


def pretty(value: object) -> str:
    """JSON on one line when short, indented otherwise (a value too long to show whole
    is cut from its one-line form: indenting megabytes to show 4,000 characters of
    them is not worth it)."""
    text = json.dumps(value, ensure_ascii=False)
    if 140 < len(text) <= _SHOWN:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _hex(data: bytes) -> str:
    """Bytes as hex, cut to what a page shows."""
    text = "0x" + data[: _SHOWN // 2].hex()
    return text if len(data) * 2 + 2 <= _SHOWN else text[:_SHOWN] + f"… ({len(data)} bytes)"


def json_bytes(data: bytes) -> str:
    """JSON bytes pretty-printed; other bytes as hex."""
    if not data:
        return ""
    try:
        return pretty(json.loads(data))
    except (ValueError, RecursionError):
        return _hex(data)


class Decoder:
    """Decodes payloads with the registry's message types."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def _type(
        self, deployment_id: str, service: str, method: str, output: bool
    ) -> type[Message] | None:
        target = None
        if deployment_id:
            target = self._registry.service_on(deployment_id, service)
        target = target or self._registry.service(service)
        handler = target.methods.get(method) if target else None
        if handler is None:
            return None
        return handler.output_type if output else handler.input_type

    def message(
        self, data: bytes, service: str, method: str, deployment_id: str = "", output: bool = False
    ) -> str:
        """A request (or, with `output`, a response) of `service/method` as JSON."""
        kind = self._type(deployment_id, service, method, output)
        if kind is None:
            return json_bytes(data)
        try:
            message = kind.FromString(data)
            as_dict = to_dict(message, preserving_proto_field_name=True)
        except DecodeError:
            return _hex(data)
        except Exception:  # an Any of a type nobody defines, or whose value does not parse
            return _hex(data)
        return pretty(as_dict)

    def result(
        self,
        result: journal_pb2.Result,
        service: str = "",
        method: str = "",
        deployment_id: str = "",
    ) -> tuple[str, str]:
        """(kind, text): kind is "value", "failure", "empty" or "" when not completed."""
        which = result.WhichOneof("kind")
        if which == "value":
            if service and method:
                return "value", self.message(result.value, service, method, deployment_id, True)
            return "value", json_bytes(result.value)
        if which == "failure":
            return "failure", f"{code_name(result.failure.code)}: {result.failure.message}"
        if which == "empty":
            return "empty", "(done)"
        return "", ""
