"""Fault tests: every promise of trust proven against a hostile or unlucky machine."""
