"""Entry point for `python -m condasync`."""

from condasync.cli import main

main()
