"""The holiday demo's `flights.Flights` service; run it with `python -m services.flights`."""

from .service import Flights, main

__all__ = ["Flights", "main"]
