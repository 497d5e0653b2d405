"""Kept for imports written before `durable.wire`; the event loop choice lives there now."""

from .wire import loop_name, run

__all__ = ["loop_name", "run"]
