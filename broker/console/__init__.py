"""The operators' web console: server-rendered pages over the admin API.

`--console 127.0.0.1:9093` (`BROKER_CONSOLE`) serves it from the broker's own event
loop (aiohttp), with the admin API's access rules: the admin token when one is set
(asked for once, kept in an HttpOnly same-site cookie, or sent as
`Authorization: Bearer`), and TLS when the broker has a certificate. Everything it
shows comes from the admin servicer (`broker.admin`), called in process: brokerctl and
the console never disagree. The pages work without JavaScript; a small hand-written
script (static/console.js) refreshes live parts and checks JSON as it is typed.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..addresses import split_address
from ._admin import Admin, AdminError
from ._decode import Decoder
from ._hosts import is_loopback
from ._rates import Rates

if TYPE_CHECKING:
    from ..admin import AdminServicer
    from ..config import Settings
    from ..registry import Registry

log = logging.getLogger("broker.console")

__all__ = ["Admin", "AdminError", "Console", "start_console"]


class Console:
    """The running console."""

    static_dir = Path(__file__).parent / "static"

    def __init__(self, settings: Settings, admin: AdminServicer, registry: Registry) -> None:
        self.settings = settings
        self.admin = Admin(admin)
        self.decoder = Decoder(registry)
        self.rates = Rates(self.admin.stats)
        self.tls = bool(self.settings.tls_cert and self.settings.tls_key)
        # Trace links only when spans are exported and a Jaeger UI was named.
        self.jaeger_url = (
            self.settings.jaeger_ui if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else None
        )
        self.port = 0
        # Set when it listens on a loopback address: requests must then name one too.
        self.loopback = False
        self._runner: web.AppRunner | None = None

    async def start(self, address: str) -> None:
        """Serves on `address` (host:port; port 0 picks one, see `port`)."""
        from . import _app

        host, port = split_address(address)
        self.loopback = is_loopback(host)
        self._runner = web.AppRunner(_app.build(self), access_log=None, logger=_app.server_logger())
        await self._runner.setup()
        context = None
        if self.tls:
            assert self.settings.tls_cert and self.settings.tls_key
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self.rates.start()
        if not self.settings.admin_token and not is_loopback(host):
            log.warning(
                "the console on %s is reachable from other machines and has no token: "
                "set --admin-token",
                address,
            )
        scheme = "https" if self.tls else "http"
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as URLs write it
        log.info("console on %s://%s:%d/", scheme, shown, self.port)

    async def stop(self) -> None:
        """Stops serving."""
        await self.rates.stop()
        if self._runner is not None:
            await self._runner.cleanup()


async def start_console(settings: Settings, admin: AdminServicer, registry: Registry) -> Console:
    """Starts the console on `settings.console`, reading through the admin servicer."""
    assert settings.console
    console = Console(settings, admin, registry)
    await console.start(settings.console)
    return console
