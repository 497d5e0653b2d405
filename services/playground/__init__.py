"""Services that exercise the whole programming model (tests and examples)."""
