"""The one place the project's version is declared.

The SDK's `pyproject.toml` reads it, and the broker's `setup.py` reads it for its own
version and for its exact pin of the SDK (the broker and the SDK speak one wire protocol).
"""

__version__ = "0.1.0"
