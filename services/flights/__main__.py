"""Entry point: `python -m services.flights --listen host:port`."""

from .service import main

if __name__ == "__main__":
    main()
