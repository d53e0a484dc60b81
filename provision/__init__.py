"""Provisioning: where Sophgo's files come from, and (with the provisioning issue) the
operations that install debs, stage SD cards and set clocks."""

if __name__ != "llmtpu.provision":  # the folder is also importable from the repo root; one name only
    raise ImportError(f"import llmtpu.provision, not {__name__}: provision/ has one import name (README: Layout)")
