"""The verification runner's test service: handlers that interpret generated programs."""
