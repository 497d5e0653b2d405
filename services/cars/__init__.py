"""The holiday demo's `cars.Cars` service; run it with `python -m services.cars`."""

from .service import Cars, main

__all__ = ["Cars", "main"]
