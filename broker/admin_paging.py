"""How the admin API's listings page (Google AIP-158), the same for one broker and for
the front of many partitions: pure functions over the request.

A page holds at most `MAX_LIST_LIMIT` invocations (a larger `limit` is coerced, not
refused), so no listing blocks the event loop for long or outgrows a message. The
listing is ordered newest first by (created_at_ms, invocation id), a key that never
changes, so a page token is simply the last key of the previous page: the next page
is the matches after it, and invocations created meanwhile neither repeat nor shift
what follows. Offset paging (the web console's) stays, within the first
`MAX_LIST_WINDOW` matches, as Elasticsearch's max_result_window bounds `from`: a deep
offset costs every partition offset+limit records.

Every refusal is a `PagingError`, answered INVALID_ARGUMENT with its message.

The other listings that can grow with the broker's data take the same ceiling
(`coerce_limit`): ListSchedules pages by name with a token from `encode_name_token`,
ListAwaiting cuts its lists and says how many there are.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
from collections.abc import Callable, Sequence

from durable.v1 import admin_pb2

from .config import REPEATED_ITEM_BYTES

# Invocations listed when the request sets no limit: a response must fit in a message.
DEFAULT_LIST_LIMIT = 1000
# The most one page holds; a larger limit is taken as this.
MAX_LIST_LIMIT = 1000
# How far offset paging reaches (offset + limit); page_token goes further.
MAX_LIST_WINDOW = 10_000
# Far above any token this module issues: a longer one is refused before decoding.
_MAX_TOKEN_CHARS = 512

# (created_at_ms, invocation id): the listing's order, largest (newest) first.
Key = tuple[int, str]


class PagingError(ValueError):
    """A ListInvocations request whose paging the broker refuses; the message says why
    and what to send instead."""


@dataclasses.dataclass(frozen=True)
class Page:
    """The page a request asks for.

    Attributes:
        offset: Matches skipped before the page (0 with a page token).
        limit: The most the page holds, coerced to `MAX_LIST_LIMIT`.
        after: The previous page's last key (from `page_token`): the page holds the
            matches after it only. None from the first match.
    """

    offset: int
    limit: int
    after: Key | None


def fitting(sizes: Sequence[int], cap: int) -> int:
    """How many of a page's leading records fit in `cap` bytes together, given their
    sizes (0 for one no longer there): at least the first that is there. A listed record
    holds its result, so a page may have to stop short of its limit."""
    total, held = 0, False
    for n, size in enumerate(sizes):
        if size:
            total += size + REPEATED_ITEM_BYTES
            if held and total > cap:
                return n
            held = True
    return len(sizes)


def coerce_limit(limit: int) -> int:
    """How many a listing holds when asked for `limit`: the default for 0, never more
    than `MAX_LIST_LIMIT` (a larger limit is taken as it, not refused)."""
    return min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)


def page_limit(request: admin_pb2.ListInvocationsRequest) -> int:
    """The most the page holds: the default when unset, never over `MAX_LIST_LIMIT`."""
    return coerce_limit(request.limit)


def _refusal() -> PagingError:
    return PagingError(
        "page_token is not one this broker issued; pass next_page_token from the "
        "previous page unchanged (or no page_token for the first page)"
    )


def _encode(text: str) -> str:
    # Unpadded base64url: a token goes into a URL or a shell command as it is.
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _decode(token: str) -> str:
    """The text `_encode` made `token` of.

    Raises:
        PagingError: Not base64url of UTF-8, or too long to be a token of ours.
    """
    if len(token) > _MAX_TOKEN_CHARS:
        raise _refusal()
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8
        raise _refusal() from None


def encode_token(key: Key) -> str:
    """The page token naming `key`: base64url of `created_at_ms:id`, unpadded."""
    return _encode(f"{key[0]}:{key[1]}")


def decode_token(token: str) -> Key:
    """The key a page token names.

    Raises:
        PagingError: A token that `encode_token` did not produce.
    """
    created, sep, invocation_id = _decode(token).partition(":")
    try:
        key = (int(created), invocation_id) if created.isdigit() else None
    except ValueError:  # a number too long to convert
        raise _refusal() from None
    # Re-encoding must give the token back: the decoder skips stray characters, and
    # "007" would name the same key as "7"; neither is a token this module issued.
    if key is None or not sep or not invocation_id or encode_token(key) != token:
        raise _refusal()
    return key


def encode_name_token(name: str) -> str:
    """The page token of a listing by name whose previous page ended at `name`."""
    return _encode(name)


def decode_name_token(token: str, valid: Callable[[str], bool]) -> str:
    """The name a token of `encode_name_token` carries.

    Args:
        token: The request's page_token (not empty).
        valid: Whether a name is one the listing can hold: any other was not issued.

    Raises:
        PagingError: A token that `encode_name_token` did not produce for a valid name.
    """
    name = _decode(token)
    if not name or not valid(name) or encode_name_token(name) != token:
        raise _refusal()
    return name


def name_page(
    names: Sequence[str], page_token: str, limit: int, valid: Callable[[str], bool]
) -> tuple[Sequence[str], str]:
    """The page of a listing by name: the names after the token's, at most `limit`
    (coerced), and the next page's token ("" on the last page). A name is a key that
    never changes, so a walk never repeats or skips one, whatever is added or removed
    meanwhile.

    Args:
        names: Every name listed, sorted.
        page_token: The request's token ("" for the first page).
        limit: The request's limit.
        valid: Whether a name is one the listing can hold.

    Raises:
        PagingError: A token that `encode_name_token` did not produce.
    """
    start = 0
    if page_token:
        start = bisect.bisect_right(names, decode_name_token(page_token, valid))
    page = names[start : start + coerce_limit(limit)]
    more = start + len(page) < len(names)
    return page, encode_name_token(page[-1]) if more else ""


def check(request: admin_pb2.ListInvocationsRequest) -> Page:
    """The page `request` asks for, checked before any work is done.

    Raises:
        PagingError: A page token that does not decode, one given with an offset, or
            an offset page that ends past `MAX_LIST_WINDOW`.
    """
    limit = page_limit(request)
    if request.page_token:
        if request.offset:
            raise PagingError(
                "page_token and offset cannot be combined: the token already says where "
                "the page starts; send offset 0 with it"
            )
        return Page(0, limit, decode_token(request.page_token))
    if request.offset + limit > MAX_LIST_WINDOW:
        raise PagingError(
            f"offset {request.offset} with limit {limit} ends past the first "
            f"{MAX_LIST_WINDOW:,} matches, as far as offset paging reaches; page with "
            "page_token instead (each page's next_page_token), or narrow the filters"
        )
    return Page(request.offset, limit, None)
