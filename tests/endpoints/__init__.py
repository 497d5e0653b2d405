"""Endpoint programs that tests start as processes (`python -m tests.endpoints.NAME`)."""
