"""The holiday demo's `payments.Payments` service; run it with `python -m services.payments`."""

from .service import Payments, main

__all__ = ["Payments", "main"]
