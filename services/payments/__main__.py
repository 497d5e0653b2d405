"""Entry point: `python -m services.payments --listen host:port`."""

from .service import main

if __name__ == "__main__":
    main()
