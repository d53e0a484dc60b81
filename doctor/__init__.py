"""`llmtpu doctor`: facts (read-only observations), checks (verdicts) and their renderers."""

if __name__ != "llmtpu.doctor":  # the folder is also importable from the repo root; one name only
    raise ImportError(f"import llmtpu.doctor, not {__name__}: doctor/ has one import name (README: Layout)")
