"""The holiday demo's `trips.Trips` service; run it with `python -m services.trips`."""

from .service import Trips, main

__all__ = ["Trips", "main"]
