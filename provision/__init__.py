"""Provisioning: where Sophgo's files come from, and (with the provisioning issue) the
operations that install debs, stage SD cards and set clocks."""
