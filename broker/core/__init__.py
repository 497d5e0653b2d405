"""The broker's state machine: invocations, their journals, keys, timers."""
