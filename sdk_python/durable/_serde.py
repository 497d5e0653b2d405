"""How state values, `run` results, awakeable and promise values are journaled.

Every value is stored as JSON so that the broker, `brokerctl state` and the admin API
can show and edit it: JSON values as they are, protobuf messages in the proto3 JSON
mapping (read back as messages by passing their class as `type=`). Anything else fails
at once with a `TerminalError` naming its type: retrying cannot make it serializable.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from ._errors import TerminalError

M = TypeVar("M", bound=Message)

ACCEPTED = (
    "JSON values (dict with str keys, list, str, int, float, bool, None) "
    "or protobuf messages (read back with type=TheMessage)"
)


def encode(value: Any, what: str) -> bytes:
    """`value` as journaled JSON bytes.

    Args:
        value: A JSON value or a protobuf message.
        what: What the value is, for the error message, e.g. `state value 'cart'`.

    Raises:
        TerminalError: INTERNAL, naming the value's type and what is accepted.
    """
    if isinstance(value, Message):
        return json_format.MessageToJson(value, indent=None).encode()
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError) as e:
        raise TerminalError(
            f"cannot journal {what}: a {_type_name(value)} cannot be encoded ({e}); "
            f"accepted are {ACCEPTED}",
            grpc.StatusCode.INTERNAL,
        ) from None


def decode(raw: bytes, message_type: type[M] | None, what: str) -> Any:
    """Journaled JSON bytes as a JSON value, or as a `message_type` message when given.

    Raises:
        TerminalError: INTERNAL when the bytes are not JSON, or the JSON is not a
            `message_type`: the same bytes come back on every retry, so retrying cannot
            help, and failing frees the object's key for an operator to repair the value.
    """
    try:
        try:
            # What `encode` and the admin API store is UTF-8: decoding it here skips the
            # encoding detection `json.loads` runs on bytes (a third of a small value's cost).
            text: str | bytes = raw.decode()
        except UnicodeDecodeError:
            text = raw  # UTF-16 or UTF-32 JSON, or not JSON: json.loads tells
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise TerminalError(
            f"{what} is not JSON ({e}); only JSON values and protobuf messages are stored",
            grpc.StatusCode.INTERNAL,
        ) from None
    if message_type is None:
        return value
    name = message_type.DESCRIPTOR.full_name
    # json_format turns a JSON string or number into an empty message without a word;
    # only the well-known types have JSON forms other than an object.
    if not isinstance(value, dict) and not name.startswith("google.protobuf."):
        raise TerminalError(
            f"{what} is not a {name}: its JSON is a {type(value).__name__}, not an object",
            grpc.StatusCode.INTERNAL,
        )
    try:
        return json_format.ParseDict(value, message_type(), ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise TerminalError(f"{what} is not a {name}: {e}", grpc.StatusCode.INTERNAL) from None


def _type_name(value: Any) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
