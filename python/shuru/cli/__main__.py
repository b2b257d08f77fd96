"""`python -m shuru.cli`: the same as the `shuru` command."""

from .app import main

if __name__ == "__main__":
    main()
