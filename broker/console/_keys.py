"""A key of a virtual object or workflow (state, inbox, promises) and what waits on
awakeables and promises, with the forms that edit and complete them."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from durable.v1 import admin_pb2

from ._decode import json_bytes
from ._format import inv_link, key_link
from ._html import Safe, h, join, notice, table

if TYPE_CHECKING:
    from . import Console


def json_editor(name: str, label: str, value: str = "", rows: int = 3) -> Safe:
    """A textarea checked as JSON in the page (console.js) and again by the server."""
    return h(
        '<label>{label} <textarea name="{name}" rows="{rows}" data-json spellcheck="false" '
        'required>{value}</textarea></label><span class="json-error" role="alert"></span>',
        label=label,
        name=name,
        rows=rows,
        value=value,
    )


# State values a key's page shows (each with its editor): an object may hold a million
# small ones, hundreds of MB of page that held the broker's loop for tens of seconds.
MAX_STATE_ROWS = 500


def _hidden(**fields: str) -> Safe:
    """Hidden fields, each also as `NAME_b64`, its exact text: browsers post a value's
    line breaks as CR LF, which for a key or a state value's name is another one (an
    edit of key "a\nb" landed on "a\r\nb"). The handlers read `exact` values."""
    return join(
        h(
            '<input type="hidden" name="{k}" value="{v}">'
            '<input type="hidden" name="{k}_b64" value="{b}">',
            k=k,
            v=v,
            b=base64.urlsafe_b64encode(v.encode()).decode(),
        )
        for k, v in fields.items()
    )


def exact(values: dict[str, str], name: str) -> str:
    """The form's value `name` as the page held it (see `_hidden`)."""
    encoded = values.get(f"{name}_b64")
    if encoded is not None:
        try:
            return base64.urlsafe_b64decode(encoded.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            pass  # not one of ours: the plain value, as a form without it sends
    return values.get(name, "")


def _promise_forms(p: admin_pb2.Promise, values: dict[str, str]) -> Safe:
    ident = _hidden(service=p.service, key=p.key, name=p.name)
    return h(
        """<form method="post" action="/promises/resolve" class="completion">{ident}
{editor}<button type="submit">Resolve</button></form>
<form method="post" action="/promises/reject" class="completion">{ident}
<label>Reason <input name="reason" required value="{reason}"></label>
<button type="submit" class="danger">Reject</button></form>""",
        ident=ident,
        editor=json_editor("value", "Value (JSON)", values.get("value", "")),
        reason=values.get("reason", ""),
    )


def _promises(promises: list[admin_pb2.Promise], values: dict[str, str]) -> Safe:
    rows = []
    for p in promises:
        if p.HasField("result"):
            which = p.result.WhichOneof("kind")
            done = (
                json_bytes(p.result.value)
                if which == "value"
                else f"rejected: {p.result.failure.message}"
            )
            action: Safe | str = ""
        else:
            done, action = "pending", _promise_forms(p, values)
        rows.append(
            [
                key_link(p.service, p.key),
                p.name,
                h("<pre>{d}</pre>", d=done),
                join((inv_link(w) for w in p.waiting), " "),
                action,
            ]
        )
    return table(["workflow key", "promise", "value", "awaited by", "complete"], rows)


async def key_page(
    console: Console, service: str, key: str, values: dict[str, str] | None = None
) -> Safe:
    """State, holder, inbox and promises of one key."""
    values = values or {}
    described = await console.admin.key(service, key)
    state_rows = []
    names = sorted(described.state)
    for name in names[:MAX_STATE_ROWS]:
        state_rows.append(
            [
                h('<span class="mono">{n}</span>', n=name),
                h("<pre>{v}</pre>", v=json_bytes(described.state[name])),
                h(
                    """<form method="post" action="/state" class="completion">{ident}
{name}{editor}
<button type="submit" name="op" value="set">Set</button>
<button type="submit" name="op" value="clear" class="danger"
formnovalidate>Clear</button></form>""",
                    ident=_hidden(service=service, key=key),
                    name=_hidden(name=name),
                    editor=json_editor(
                        "value",
                        f"New value of {name} (JSON)",
                        values.get("value", "")
                        if exact(values, "name") == name
                        else json_bytes(described.state[name]),
                    ),
                ),
            ]
        )
    # A rejected new value is shown again in the form it came from.
    new = exact(values, "name") not in described.state
    add = h(
        """<form method="post" action="/state" class="completion"><h3>Add a value</h3>{ident}
<label>Name <input name="name" required value="{name}"></label>{editor}
<button type="submit" name="op" value="set">Set</button></form>""",
        ident=_hidden(service=service, key=key),
        name=values.get("name", "") if new else "",
        editor=json_editor(
            "value",
            "Value (JSON)",
            values.get("value", "") if new else "",
        ),
    )
    inbox = join(h("<li>{l}</li>", l=inv_link(i)) for i in described.inbox)
    # The broker lists the head of a long queue only.
    cut = (
        h(
            '<p class="hint">The first {shown} of {m} in line.</p>',
            shown=len(described.inbox),
            m=described.inbox_length,
        )
        if described.inbox_length > len(described.inbox)
        else Safe("")
    )
    state_cut = (
        h(
            "<p>The first {shown} values by name; {more} more: "
            "<code>brokerctl state get {service} KEY NAME</code> reads any one.</p>",
            shown=MAX_STATE_ROWS,
            more=len(names) - MAX_STATE_ROWS,
            service=service,
        )
        if len(names) > MAX_STATE_ROWS
        else Safe("")
    )
    return h(
        """<h1>{service} <span class="mono">{key}</span></h1>
<p>Held by: {holder}</p>
<section aria-labelledby="st"><h2 id="st">State ({n} values)</h2>
<p class="hint">Values are JSON, as the SDK stores them; a key held by a running exclusive
handler cannot be edited (the same rules as <code>brokerctl state set</code>).</p>
{state}{add}</section>
<section aria-labelledby="ib"><h2 id="ib">Inbox ({m} waiting)</h2><ol>{inbox}</ol>{cut}</section>
<section aria-labelledby="pr"><h2 id="pr">Promises</h2>{promises}</section>""",
        service=service,
        key=key,
        holder=inv_link(described.holder) if described.holder else "nobody",
        n=len(described.state),
        state=Safe(str(table(["name", "value", "edit"], state_rows)) + str(state_cut))
        if state_rows
        else Safe("<p>No state.</p>"),
        add=add,
        m=described.inbox_length,
        inbox=inbox,
        cut=cut,
        promises=_promises(list(described.promises), values)
        if described.promises
        else Safe("<p>No promises.</p>"),
    )


async def awaiting_page(console: Console, values: dict[str, str] | None = None) -> Safe:
    """Pending awakeables and promises, with forms to complete them."""
    values = values or {}
    listed = await console.admin.awaiting()
    rows = []
    for a in listed.awakeables:
        mine = values.get("awakeable_id") == a.awakeable_id
        ident = _hidden(awakeable_id=a.awakeable_id)
        forms = h(
            """<form method="post" action="/awakeables/resolve" class="completion">{ident}
{editor}<button type="submit">Resolve</button></form>
<form method="post" action="/awakeables/reject" class="completion">{ident}
<label>Reason <input name="reason" required value="{reason}"></label>
<button type="submit" class="danger">Reject</button></form>""",
            ident=ident,
            editor=json_editor(
                "value",
                f"Value for {a.awakeable_id} (JSON)",
                values.get("value", "") if mine else "",
            ),
            reason=values.get("reason", "") if mine else "",
        )
        rows.append(
            [
                h('<span class="mono" id="{i}">{i}</span>', i=a.awakeable_id),
                inv_link(a.invocation_id),
                f"{a.service}/{a.method}",
                key_link(a.service, a.key),
                forms,
            ]
        )
    awakeables = (
        table(["awakeable", "invocation", "handler", "key", "complete"], rows, cls="awaiting")
        if rows
        else notice("No awakeable is waiting.", "info")
    )
    promises = (
        _promises(list(listed.promises), values)
        if listed.promises
        else notice("No promise is awaited.", "info")
    )
    return h(
        """<div><h1>Awaiting</h1>
<section aria-labelledby="aw"><h2 id="aw">Awakeables</h2>{a}</section>
<section aria-labelledby="pm"><h2 id="pm">Promises</h2>{p}</section></div>""",
        a=awakeables,
        p=promises,
    )
