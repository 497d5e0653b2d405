"""HTML building with escaping by default: every value put into a template is escaped
unless it is already `Safe` (markup built by these helpers)."""

from __future__ import annotations

import html
import string
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode


class Safe(str):
    """Markup that must not be escaped again."""


def esc(value: Any) -> Safe:
    """`value` as HTML text (Safe values pass through)."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Safe):
            return value
        return esc(super().format_field(value, format_spec))


_FORMATTER = _Escaping()


def h(template: str, /, **values: Any) -> Safe:
    """`template` with `{name}` fields filled in, each escaped unless Safe."""
    return Safe(_FORMATTER.vformat(template, (), values))


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    """Concatenates markup (escaping what is not Safe)."""
    return Safe(sep.join(esc(p) for p in parts))


def url(path: str, params: Mapping[str, Any] | None = None) -> str:
    """`path` with the non-empty `params` as a query string."""
    query = {k: v for k, v in (params or {}).items() if v not in ("", None, 0)}
    return path + ("?" + urlencode(query) if query else "")


def link(href: str, text: Any, **attrs: str) -> Safe:
    """An `<a>`."""
    extra = join(
        h(' {k}="{v}"', k=Safe(k.rstrip("_").replace("_", "-")), v=v) for k, v in attrs.items()
    )
    return h('<a href="{href}"{extra}>{text}</a>', href=href, text=text, extra=extra)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> Safe:
    """A `<table>` whose cells are escaped unless Safe."""
    head = join(h("<th scope='col'>{x}</th>", x=x) for x in headers)
    body = join(
        h("<tr>{cells}</tr>", cells=join(h("<td>{c}</td>", c=c) for c in row)) for row in rows
    )
    return h(
        '<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        "<tbody>{body}</tbody></table></div>",
        cls=cls,
        head=head,
        body=body,
    )


NAV = (("/", "Overview"), ("/invocations", "Invocations"), ("/awaiting", "Awaiting"))


_NOTHING = Safe("")


def page(title: str, body: Safe, active: str = "", status_line: Safe = _NOTHING) -> Safe:
    """A whole page: header, navigation, `body`."""
    nav = join(
        h(
            '<a href="{href}"{current}>{text}</a>',
            href=href,
            text=text,
            current=Safe(' aria-current="page"') if href == active else Safe(""),
        )
        for href, text in NAV
    )
    return h(
        """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · broker console</title>
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script>
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header><strong class="brand">broker console</strong><nav aria-label="Main">{nav}</nav>
<form class="jump" action="/find" method="get" role="search">
<label for="jump-id" class="sr">Invocation or awakeable id</label>
<input id="jump-id" name="id" placeholder="inv_… or awk_…" autocomplete="off">
<button type="submit">Go</button></form></header>
{status_line}
<main id="main" tabindex="-1">{body}</main>
</body></html>""",
        title=title,
        nav=nav,
        body=body,
        status_line=status_line,
    )


def notice(text: str, kind: str = "error") -> Safe:
    """A message box; errors are announced to screen readers."""
    role = "alert" if kind == "error" else "status"
    return h('<p class="notice {kind}" role="{role}">{text}</p>', kind=kind, role=role, text=text)
