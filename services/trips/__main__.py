"""Entry point: `python -m services.trips --listen host:port`."""

from .service import main

if __name__ == "__main__":
    main()
