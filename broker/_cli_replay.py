"""``brokerctl deployments register --check`` and ``invocations export``: safe deploys."""

from __future__ import annotations

import argparse
from typing import Any

from durable.v1 import admin_pb2

from broker import _cli_format as fmt
from broker import _cli_journal, journal_export

# A check replays many journals against the new endpoint: give it longer than a plain call.
CHECK_TIMEOUT_S = 300.0


def register(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Registers an endpoint; with ``--check``, only if recorded journals replay on it."""
    req = admin_pb2.RegisterDeploymentRequest(uri=args.uri, check=args.check, force=args.force)
    wait = max(timeout, CHECK_TIMEOUT_S) if args.check else timeout
    resp: admin_pb2.Deployment = stub.RegisterDeployment(req, timeout=wait)
    human = fmt.format_deployment(resp)
    if args.check:
        human += f"\nchecked: {resp.checked_journals} recorded journal(s) replay without divergence"
    return resp, human


def export(stub: Any, args: argparse.Namespace, timeout: float) -> tuple[Any, str]:
    """Prints an invocation's journal as a self-describing JSON document (both ways)."""
    req = admin_pb2.ExportInvocationRequest(invocation_id=args.invocation_id)
    resp = _cli_journal.whole(lambda r: stub.ExportInvocation(r, timeout=timeout), req)
    # The document is JSON for a file (durable.testing.replay) as much as for a terminal:
    # raw DEL and C1 characters become \u00XX escapes, which keep it the same JSON.
    return journal_export.document(resp), fmt.escape_json_controls(journal_export.text(resp))
