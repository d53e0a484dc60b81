"""`llmtpu doctor`: facts (read-only observations), checks (verdicts) and their renderers."""
