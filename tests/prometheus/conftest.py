"""The fleet tests' fixtures (clean HOME, the in-process CLI) for the fleet metrics test."""

from tests.fleet.conftest import cli, home

__all__ = ["cli", "home"]
