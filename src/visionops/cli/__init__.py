"""The ``visionops`` command: parses arguments and calls the library; no stage logic here."""

from visionops.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
