"""The fleet tests' fixtures (clean HOME, the in-process CLI) for the Ansible tests too."""

from tests.fleet.conftest import cli, home

__all__ = ["cli", "home"]
