"""The overview and the invocation list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from durable.v1 import admin_pb2, invocation_pb2

from ..core.model import now_ms
from . import _filters
from ._decode import code_name
from ._format import badge, duration, inv_link, key_link, when
from ._html import Safe, esc, h, join, link, notice, table, url

if TYPE_CHECKING:
    from . import Console

_STATUS_ORDER = ("PENDING", "QUEUED", "RUNNING", "SUSPENDED", "BACKING_OFF", "PAUSED")


def _chart(minutes: list[dict[str, int]]) -> Safe:
    """Bars per minute (started, failed), as inline SVG, and the same as a table."""
    top = max(
        [1] + [m["started"] for m in minutes] + [m["completed"] + m["failed"] for m in minutes]
    )
    bars = []
    for i, m in enumerate(minutes):
        x = i * 20
        for j, (event, cls) in enumerate(
            (("started", "b-start"), ("completed", "b-ok"), ("failed", "b-fail"))
        ):
            height = round(60 * m[event] / top)
            bars.append(
                h(
                    '<rect class="{cls}" x="{x}" y="{y}" width="5" height="{hgt}">'
                    "<title>{n} {event}</title></rect>",
                    cls=cls,
                    x=x + j * 6,
                    y=60 - height,
                    hgt=height,
                    n=m[event],
                    event=event,
                )
            )
    svg = h(
        '<svg class="chart" viewBox="0 0 300 72" role="img" aria-label="invocations per '
        'minute, last 15 minutes">{bars}<text x="0" y="70">-15 min</text>'
        '<text x="300" y="70" text-anchor="end">now</text></svg>',
        bars=join(bars),
    )
    rows = [
        [f"-{len(minutes) - i} min", m["started"], m["completed"], m["failed"]]
        for i, m in enumerate(minutes)
    ]
    details = h(
        "<details><summary>Per minute, as a table</summary>{t}</details>",
        t=table(["minute", "started", "succeeded", "failed"], rows[-5:]),
    )
    legend = Safe(
        '<p class="legend"><span class="b-start">■</span> started '
        '<span class="b-ok">■</span> succeeded <span class="b-fail">■</span> failed</p>'
    )
    return join([svg, legend, details])


async def overview(console: Console) -> Safe:
    """Services and deployments, counts, throughput."""
    stats = await console.admin.stats()
    services = await console.admin.services()
    deployments = {d.id: d for d in (await console.admin.deployments()).deployments}
    cards = []
    for name in _STATUS_ORDER:
        shown = name.lower().replace("_", "-")
        cards.append((shown, stats.by_status.get(name, 0), url("/invocations", {"status": shown})))
    cards.append(("succeeded", stats.succeeded, "/invocations?status=succeeded"))
    cards.append(("failed", stats.failed, "/invocations?status=failed"))
    count_html = join(
        h('<a class="card s-{n}" href="{u}"><span class="num">{c}</span> {n}</a>', n=n, c=c, u=u)
        for n, c, u in cards
    )
    by_code = join(
        h(
            " {link} ",
            link=link(
                url("/invocations", {"status": "failed", "code": code_name(c)}),
                f"{code_name(c)}: {n}",
            ),
        )
        for c, n in sorted(stats.failed_by_code.items())
    )
    partial = (
        ""
        if stats.complete
        else notice(
            "Counts of completed invocations are partial: the broker is still indexing them "
            "after a start, or indexes only the newest (--admin-index-rows).",
            "info",
        )
    )
    service_rows = []
    for s in services.services:
        d = deployments.get(s.deployment_id)
        handlers = join(
            h(
                "<span class='handler'>{n}{shared}</span> ",
                n=m.name,
                shared=" (shared)" if m.shared else "",
            )
            for m in s.handlers
        )
        service_rows.append(
            [
                link(url("/invocations", {"service": s.name}), s.name),
                s.kind.replace("_", " "),
                handlers,
                s.deployment_id,
                d.uri if d else "",
                d.mode.replace("_", "/") if d else "",
                d.in_flight if d else "",
            ]
        )
    key_form = Safe(
        '<form class="inline" action="/key" method="get"><label>Object or workflow '
        '<select name="service">'
        + "".join(
            str(h('<option value="{n}">{n}</option>', n=s.name))
            for s in services.services
            if s.kind != "service"
        )
        + '</select></label> <label>key <input name="key" required></label> '
        "<button>Open</button></form>"
    )
    jaeger = ""
    if console.jaeger_url:
        jaeger = h(
            "<p>Traces: {l}</p>",
            l=link(f"{console.jaeger_url}/search?service=broker", "open Jaeger", rel="noreferrer"),
        )
    return h(
        """<h1>Overview</h1>{partial}
<section aria-labelledby="counts"><h2 id="counts">Invocations retained</h2>
<div class="cards">{cards}</div><p>Failures by code: {by_code}</p></section>
<section aria-labelledby="rate"><h2 id="rate">Last 15 minutes</h2>{chart}</section>
<section aria-labelledby="svc"><h2 id="svc">Services</h2>{services}{key_form}</section>{jaeger}""",
        partial=partial,
        cards=count_html,
        by_code=by_code or "none",
        chart=_chart(console.rates.per_minute(current=stats)),
        services=table(
            ["service", "kind", "handlers", "deployment", "endpoint", "mode", "in flight"],
            service_rows,
        ),
        key_form=key_form,
        jaeger=jaeger,
    )


def _filter_form(query: Mapping[str, str], services: admin_pb2.ListServicesResponse) -> Safe:
    def value(name: str) -> str:
        return query.get(name, "")

    service_options = join(
        h(
            '<option value="{n}"{sel}>{n}</option>',
            n=s.name,
            sel=Safe(" selected") if s.name == value("service") else Safe(""),
        )
        for s in services.services
    )
    status_options = join(
        h(
            '<option value="{n}"{sel}>{n}</option>',
            n=n,
            sel=Safe(" selected") if n == value("status") else Safe(""),
        )
        for n in _filters.STATUSES
    )
    return h(
        """<form class="filters" method="get" action="/invocations" aria-label="Filters">
<label>Service <select name="service"><option value="">any</option>{services}</select></label>
<label>Handler <input name="method" value="{method}" placeholder="Reserve"></label>
<label>Key <input name="key" value="{key}"></label>
<label>Status <select name="status"><option value="">any</option>{statuses}</select></label>
<label>Failure code <input name="code" value="{code}" placeholder="ABORTED"></label>
<label>Idempotency key <input name="idempotency_key" value="{idem}"></label>
<label>Created since
<input name="since" value="{since}" placeholder="15m, 2026-11-29T13:05"></label>
<label>until <input name="until" value="{until}" placeholder="UTC"></label>
<button type="submit">Filter</button> <a href="/invocations">Clear</a></form>""",
        services=service_options,
        method=value("method"),
        key=value("key"),
        statuses=status_options,
        code=value("code"),
        idem=value("idempotency_key"),
        since=value("since"),
        until=value("until"),
    )


async def _listing(
    console: Console, request: admin_pb2.ListInvocationsRequest
) -> tuple[list[invocation_pb2.Invocation], admin_pb2.ListInvocationsResponse]:
    """The page's records and the first answer (its total). An answer ends early when
    its records reach the admin API's size cap (large failure messages; results are not
    asked for): the rest of the page is read from where it stopped, so that page N
    holds the matches from (N-1)*PAGE_SIZE on and none is out of reach."""
    first = response = await console.admin.invocations(request)
    records = list(response.invocations)
    more = admin_pb2.ListInvocationsRequest()
    more.CopyFrom(request)
    # Each answer holds at least one record: at most `limit` rounds.
    while response.invocations and response.next_page_token and len(records) < request.limit:
        more.offset = request.offset + len(records)
        more.limit = request.limit - len(records)
        response = await console.admin.invocations(more)
        records.extend(response.invocations)
    return records, first


async def invocation_rows(console: Console, query: Mapping[str, str]) -> tuple[Safe, int]:
    """The result table and its pager (the part that refreshes itself); HTTP status."""
    request, page, errors = _filters.parse(query, now_ms())
    if errors:
        return join(notice(e) for e in errors), 400
    records, response = await _listing(console, request)
    now = now_ms()
    rows = []
    for r in records:
        took = (r.modified_at_ms if r.status == 5 else now) - r.created_at_ms
        error = ""
        if r.result.HasField("failure"):
            error = f"{code_name(r.result.failure.code)}: {r.result.failure.message}"
        elif r.last_error:
            error = r.last_error
        rows.append(
            [
                inv_link(r.id),
                f"{r.service}/{r.method}",
                key_link(r.service, r.key),
                badge(r),
                r.attempts,
                when(r.created_at_ms),
                duration(took),
                h('<span class="err">{e}</span>', e=error[:300]),
            ]
        )
    first = request.offset + 1 if rows else 0
    last = request.offset + len(rows)
    params = {f: query.get(f, "") for f in _filters.FIELDS}
    pager = [h("<span>{a}&ndash;{b} of {n}</span>", a=first, b=last, n=response.total)]
    if page > 1:
        pager.append(link(url("/invocations", {**params, "page": page - 1}), "← Newer", rel="prev"))
    if last < response.total and page < _filters.LAST_PAGE:
        pager.append(link(url("/invocations", {**params, "page": page + 1}), "Older →", rel="next"))
    elif last < response.total:
        pager.append(h("<span>older ones: narrow the filters (an earlier until)</span>"))
    body = table(
        ["invocation", "handler", "key", "status", "attempts", "created (UTC)", "took", "error"],
        rows,
        cls="invocations",
    )
    empty = Safe("") if rows else notice("No invocation matches these filters.", "info")
    if response.partial:
        empty = join(
            [
                empty,
                notice(
                    "Completed invocations are listed and counted from the newest the broker "
                    "indexes (--admin-index-rows), or not yet while it indexes them after a "
                    "start; the others are retained: open one by its id.",
                    "info",
                ),
            ]
        )
    return h(
        '<nav class="pager" aria-label="Pages">{p}</nav>{t}{e}', p=join(pager, " "), t=body, e=empty
    ), 200


async def invocations(console: Console, query: Mapping[str, str]) -> tuple[Safe, int]:
    """The list page with its filters; the results refresh every few seconds."""
    services = await console.admin.services()
    rows, status = await invocation_rows(console, query)
    params = {f: query.get(f, "") for f in (*_filters.FIELDS, "page")}
    return (
        h(
            """<h1>Invocations</h1>{done}{form}
<div id="results" data-poll="{poll}" aria-live="polite">{rows}</div>""",
            # What the action that led here did (a purge: its invocation's page is gone).
            done=notice(query["done"], "info") if query.get("done") else Safe(""),
            form=_filter_form(query, services),
            poll=url("/invocations/rows", params),
            rows=rows,
        ),
        status,
    )


__all__ = ["esc", "invocation_rows", "invocations", "overview"]
