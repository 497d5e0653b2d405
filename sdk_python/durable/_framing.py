"""Kept for imports written before `durable.wire`; the framing lives there now."""

from .wire import FRAME_BYTES, frames

__all__ = ["FRAME_BYTES", "frames"]
